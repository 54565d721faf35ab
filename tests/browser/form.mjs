// Fills and submits a Carnet web form in headless Chromium, as a person would.
// Usage: node form.mjs URL EMAIL FIRST_NAME PURPOSE_TO_TICK
// Prints one JSON line: what the page showed before submitting and what it answered.
import { chromium } from 'playwright-core';

const [url, email, firstName, purpose] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
         '--disable-sync', '--no-first-run', '--disable-quic'],
});
try {
  const page = await browser.newPage();
  await page.goto(url);
  const box = page.locator(`#consent_${purpose}`);
  const shown = {
    title: await page.locator('h1').innerText(),
    notice: await page.locator(`label[for="consent_${purpose}"]`).innerText(),
    tickedByDefault: await box.isChecked(),
    // Off-screen rather than display:none, so bots still fill it: people never see it.
    honeypotOnScreen: await page.locator('#website').boundingBox().then((b) => !!b && b.x + b.width > 0 && b.y + b.height > 0),
  };
  await page.fill('#email', email);
  await page.fill('#first_name', firstName);
  await box.check();
  await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
  const answer = await page.locator('body').innerText();
  console.log(JSON.stringify({ shown, answer }));
} finally {
  await browser.close();
}
