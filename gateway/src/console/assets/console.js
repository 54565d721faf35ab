// Carnet console: small progressive enhancement. Every page works without it.
'use strict';

// Polls `data-poll` URLs (HTML fragments) and swaps them in until the server says settled.
function startPolling(el) {
  const url = el.dataset.poll;
  const every = Number(el.dataset.pollMs || 1000);
  const tick = async () => {
    try {
      const res = await fetch(url, { credentials: 'same-origin', headers: { 'accept': 'text/html' } });
      if (res.ok) {
        el.innerHTML = await res.text();
        if (res.headers.get('x-carnet-settled') === 'true') {
          el.dataset.settled = 'true';
          // Controls that only make sense while the request is open go away with it.
          document.querySelectorAll(`[data-hide-when-settled="#${el.id}"]`).forEach((s) => { s.hidden = true; });
          return;
        }
      }
    } catch (e) { /* network hiccup: try again */ }
    setTimeout(tick, every);
  };
  setTimeout(tick, every);
}

// Downloads through fetch so a long export shows progress, then saves the file.
function enhanceDownload(link) {
  link.addEventListener('click', async (event) => {
    event.preventDefault();
    const status = link.parentElement.querySelector('.progress');
    const say = (text) => { if (status) status.textContent = text; };
    link.setAttribute('aria-disabled', 'true');
    say('Preparing the export…');
    try {
      const res = await fetch(link.href, { credentials: 'same-origin' });
      if (!res.ok || !(res.headers.get('content-type') || '').includes('json')) { window.location = link.href; return; }
      const total = Number(res.headers.get('content-length') || 0);
      const reader = res.body.getReader();
      const parts = [];
      let got = 0;
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        parts.push(value);
        got += value.length;
        say(total ? `Downloading… ${Math.round((got / total) * 100)}%` : `Downloading… ${Math.round(got / 1024)} KiB`);
      }
      const url = URL.createObjectURL(new Blob(parts, { type: 'application/json' }));
      const a = document.createElement('a');
      a.href = url;
      a.download = link.dataset.download || 'export.json';
      document.body.appendChild(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
      say(`Export ready (${Math.max(1, Math.round(got / 1024))} KiB).`);
    } catch (e) {
      say('The export failed: ' + e.message);
    } finally {
      link.removeAttribute('aria-disabled');
    }
  });
}

// The form builder's live preview: what a person will see, rebuilt on every change.
function formPreview(root) {
  const preview = root.querySelector('#fb-preview');
  const form = root.querySelector('form');
  const render = () => {
    preview.textContent = '';
    const h = document.createElement('h3');
    h.textContent = root.querySelector('#fb-name').value || 'Untitled form';
    preview.appendChild(h);
    const types = { email: 'email', phone: 'tel', date: 'date', number: 'number' };
    for (const box of form.querySelectorAll('input[name=fields]:checked')) {
      const label = document.createElement('label');
      label.textContent = box.value.replace(/_/g, ' ');
      const input = document.createElement('input');
      input.type = types[box.dataset.type] || 'text';
      input.disabled = true;
      label.appendChild(input);
      preview.appendChild(label);
    }
    for (const box of form.querySelectorAll('input[name=consents]:checked')) {
      const label = document.createElement('label');
      label.className = 'box';
      const input = document.createElement('input');
      input.type = 'checkbox';
      input.disabled = true;
      label.appendChild(input);
      label.appendChild(document.createTextNode(' ' + (box.dataset.notice || box.value)));
      preview.appendChild(label);
    }
    const button = document.createElement('button');
    button.type = 'button';
    button.disabled = true;
    button.textContent = 'Submit';
    preview.appendChild(button);
  };
  form.addEventListener('input', render);
  form.addEventListener('change', render);
  render();
}

// Disables a submit button once pressed so a slow action is not sent twice.
function busyOnSubmit(form) {
  form.addEventListener('submit', () => {
    const button = form.querySelector('button[type=submit]');
    if (button) { setTimeout(() => { button.disabled = true; button.dataset.busy = 'true'; }, 0); }
  });
}

document.addEventListener('DOMContentLoaded', () => {
  document.querySelectorAll('[data-poll]').forEach(startPolling);
  document.querySelectorAll('a[data-download]').forEach(enhanceDownload);
  document.querySelectorAll('#form-builder').forEach(formPreview);
  document.querySelectorAll('form[method=post]').forEach(busyOnSubmit);
});
