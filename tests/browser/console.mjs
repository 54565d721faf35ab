// Walks the console's journeys in headless Chromium, as a person would, and saves screenshots.
// Usage: node console.mjs JOURNEY BASE_URL API_KEY SCREENSHOT_DIR [ARGS…]
//   admin-auto-off BASE KEY DIR            : auto-enrichment on → a contact is enriched; switch it off → one is not
//   privacy-erasure BASE KEY DIR LAST_NAME : find a person, forget them, watch the request complete
//   sales-view BASE KEY DIR LAST_NAME      : find a person, see consents and source, no export/forget
// Prints one JSON line with what the pages showed.
import { chromium } from 'playwright-core';
import { mkdirSync, readFileSync } from 'node:fs';

const [journey, base, key, shots, ...args] = process.argv.slice(2);
mkdirSync(shots, { recursive: true });
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
         '--disable-sync', '--no-first-run', '--disable-quic'],
});
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const shot = (page, name) => page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
const text = (page, selector) => page.locator(selector).first().innerText();

async function signIn(page) {
  await page.goto(`${base}/console`);
  await shot(page, 'sign-in');
  await page.fill('#api_key', key);
  await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
  if (!page.url().endsWith('/console/contacts')) throw new Error(`sign-in failed: ${page.url()} ${await text(page, 'body')}`);
}

async function createContact(page, email, first, last) {
  await page.goto(`${base}/console/contacts`);
  await page.click('summary:has-text("New contact")');
  await page.fill('input[name=email]', email);
  await page.fill('input[name=first_name]', first);
  await page.fill('input[name=last_name]', last);
  await Promise.all([page.waitForNavigation(), page.click('button:has-text("Create contact")')]);
  const id = page.url().split('/console/contacts/')[1]?.split('?')[0];
  if (!id) throw new Error(`no contact page after creating: ${page.url()} ${await text(page, 'main')}`);
  return id;
}

async function findContact(page, lastName) {
  await page.goto(`${base}/console/contacts`);
  await page.fill('#q', lastName);
  await Promise.all([page.waitForNavigation(), page.click('form.search button')]);
  await Promise.all([page.waitForNavigation(), page.click(`table.list a:has-text("${lastName}")`)]);
  return page.url().split('/console/contacts/')[1].split('?')[0];
}

async function adminAutoOff(page) {
  const out = {};
  await signIn(page);
  await page.goto(`${base}/console/enrichment`);
  out.autoBefore = await page.isChecked('#auto_enrichment');
  out.manifest = await text(page, 'article.plugin');
  await shot(page, 'enrichment');
  // With auto-enrichment on, a contact created in the console is enriched.
  out.enrichedId = await createContact(page, 'ada@analytical-engines.org', 'Ada', 'Lovelace');
  const deadline = Date.now() + 30000;
  for (;;) {
    await page.goto(`${base}/console/contacts/${out.enrichedId}`);
    out.enrichedTimeline = await text(page, '#timeline');
    if (out.enrichedTimeline.includes('company-from-domain@')) break;
    if (Date.now() > deadline) break;
    await sleep(300);
  }
  out.enrichedFields = await text(page, 'section[aria-labelledby=h-fields]');
  await shot(page, 'contact');
  // Switch it off.
  await page.goto(`${base}/console/enrichment`);
  await page.uncheck('#auto_enrichment');
  await Promise.all([page.waitForNavigation(), page.click('#save-switches')]);
  out.flash = await text(page, '.flash');
  out.autoAfter = await page.isChecked('#auto_enrichment');
  out.quietId = await createContact(page, 'grace@hopper-labs.com', 'Grace', 'Hopper');
  // The other pages an admin uses, for the tour.
  await page.goto(`${base}/console/contacts`);
  await shot(page, 'contacts');
  await page.goto(`${base}/console/consent`);
  await shot(page, 'consent-purposes');
  await page.goto(`${base}/console/consent/purposes/newsletter`);
  out.diff = await page.locator('#notice-diff').innerHTML();
  await shot(page, 'consent-purpose-diff');
  await page.goto(`${base}/console/consent/forms`);
  await page.check('input[name=consents][value=newsletter]');
  await page.check('input[name=fields][value=first_name]');
  out.preview = await text(page, '#fb-preview');
  await shot(page, 'consent-form-builder');
  await Promise.all([page.waitForNavigation(), page.click('button:has-text("Create form")')]);
  out.embed = await page.inputValue('#embed');
  await shot(page, 'consent-form-created');
  // A campaign: its progress updates in place while it sends.
  await page.goto(`${base}/console/campaigns`);
  await page.click('summary:has-text("New campaign")');
  await page.fill('input[name=name]', 'November news');
  await page.selectOption('select[name=purpose]', 'newsletter');
  await page.fill('input[name=subject]', 'News for {{first_name}}');
  await page.fill('textarea[name=body]', 'Hello {{first_name}}, here is the news.');
  await Promise.all([page.waitForNavigation(), page.click('button:has-text("Create draft")')]);
  await Promise.all([page.waitForNavigation(), page.click('button:has-text("Send now")')]);
  await page.evaluate(() => { window.__stayed = true; });
  await page.waitForSelector('#campaigns .badge.completed', { timeout: 60000 });
  out.campaignStayed = await page.evaluate(() => window.__stayed === true);
  out.campaign = await text(page, '#campaigns tbody tr');
  await shot(page, 'campaigns');
  await page.goto(`${base}/console/settings/fields`);
  await shot(page, 'settings-field-policy');
  await page.goto(`${base}/console/settings/keys`);
  await shot(page, 'settings-api-keys');
  return out;
}

async function privacyErasure(page, lastName) {
  const out = {};
  await signIn(page);
  out.contactId = await findContact(page, lastName);
  await shot(page, 'contact-as-privacy-officer');
  // One-click export, with its progress line, before the person is forgotten.
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('#export')]);
  out.exportName = download.suggestedFilename();
  out.exportHasId = readFileSync(await download.path(), 'utf8').includes(out.contactId);
  await page.waitForFunction(() => (document.querySelector('.progress')?.textContent || '').includes('Export ready'));
  out.exportProgress = await text(page, '.progress');
  out.hasForget = await page.locator('#forget').count();
  await Promise.all([page.waitForNavigation(), page.click('#forget')]);
  out.confirmation = await text(page, 'main');
  await shot(page, 'forget-confirmation');
  await Promise.all([page.waitForNavigation(), page.click('#confirm-forget')]);
  out.requestUrl = page.url();
  out.requestId = await text(page, '#request-id');
  out.polling = await page.locator('#tasks[data-poll]').count();
  out.firstStatus = await page.locator('#request-status').getAttribute('data-status');
  // The page must not reload: it updates itself while the participants confirm.
  await page.evaluate(() => { window.__stayed = true; });
  await page.waitForSelector('#request-status[data-status=completed]', { timeout: 60000 });
  out.stayed = await page.evaluate(() => window.__stayed === true);
  out.tasks = await page.locator('#tasks-table tbody tr').evaluateAll((rows) =>
    rows.map((r) => ({ service: r.dataset.service, status: r.dataset.taskStatus })));
  out.statusLine = await text(page, '#request-status');
  await shot(page, 'privacy-request');
  await page.goto(`${base}/console/privacy`);
  out.queue = await text(page, 'main');
  await shot(page, 'privacy-queue');
  await page.goto(`${base}/console/privacy/ledger`);
  out.ledger = await text(page, 'main');
  await shot(page, 'privacy-ledger');
  await page.goto(`${base}/console/privacy/audit?subject_id=${out.contactId}`);
  out.audit = await text(page, 'main');
  await shot(page, 'privacy-audit');
  await page.goto(`${base}/console/privacy/holds`);
  await shot(page, 'privacy-holds');
  return out;
}

async function salesView(page, lastName) {
  const out = {};
  await signIn(page);
  out.nav = await text(page, 'header nav');
  out.contactId = await findContact(page, lastName);
  out.consents = await text(page, '#consents');
  out.source = await text(page, '#source');
  out.exportButtons = await page.locator('#export, a[href$="/export"]').count();
  out.forgetButtons = await page.locator('#forget, a[href$="/forget"]').count();
  out.buttons = await page.locator('main button, main a.button').allInnerTexts();
  await shot(page, 'contact-as-sales');
  // Typing the export address by hand gets the API's refusal, not the file.
  await page.goto(`${base}/console/contacts/${out.contactId}/export`);
  out.exportByHand = await text(page, 'main');
  return out;
}

try {
  const context = await browser.newContext({ viewport: { width: 1366, height: 800 }, acceptDownloads: true });
  const page = await context.newPage();
  const out = journey === 'admin-auto-off' ? await adminAutoOff(page)
    : journey === 'privacy-erasure' ? await privacyErasure(page, args[0])
    : journey === 'sales-view' ? await salesView(page, args[0])
    : (() => { throw new Error(`unknown journey ${journey}`); })();
  console.log(JSON.stringify(out));
} finally {
  await browser.close();
}
