// Drive OHIF in Debian's headless Chromium the way a radiologist would, for tests/test_viewer.py.
//
//   node drive.mjs JOB.json
//
// JOB: {app, dicomweb, token, entry, names, open, search, out, timeout}. The viewer is opened on the
// `entry` study with `?token=` (how OHIF takes a bearer token without an OpenID provider), then
// the header's way back leads to the study list, which should show `names`; each of `open`
// ({row, name}) is then opened from the list: a click on its row (the cell whose text is
// `row`) and on its "Basic Viewer" button. Last, back in the list, `search.text` is typed into
// the patient filter, which should leave only `search.finds`. Screenshots: entry.png, list.png,
// NAME.png and search.png in `out`. Prints one JSON object: the DICOMweb requests made (URL, status, Content-Type), the failed ones,
// console errors and uncaught page errors, the study list's text, where each name is drawn in
// list.png and where the viewport and the first series thumbnail are in each viewer screenshot (CSS pixels = screenshot pixels).
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const job = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const timeout = job.timeout ?? 120000;
// The flags that work in a container without a GPU or a display; a fresh profile each run.
const profile = mkdtempSync(join(tmpdir(), 'huren-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: '/usr/bin/chromium',
  headless: true,
  viewport: { width: 1600, height: 900 },
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
context.setDefaultTimeout(timeout);
// A radiologist who has taken OHIF's guided tour once: its overlay would cover the viewer.
await context.addInitScript(() => localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour'])));

const report = { requests: [], failed: [], console: [], pageErrors: [], listText: '', names: {}, viewports: {}, thumbnails: {}, searches: [] };
const inFlight = new Set();
let framesReceived = 0;
const isDicomweb = url => url.startsWith(job.dicomweb);
const page = context.pages()[0] ?? await context.newPage();
page.on('console', message => {
  if (message.type() === 'error') report.console.push(message.text());
});
page.on('pageerror', error => report.pageErrors.push(String(error)));
page.on('request', request => {
  if (isDicomweb(request.url())) inFlight.add(request);
});
page.on('requestfailed', request => {
  inFlight.delete(request);
  if (isDicomweb(request.url())) {
    report.failed.push({ url: request.url(), method: request.method(), error: request.failure()?.errorText });
  }
});
page.on('requestfinished', async request => {
  inFlight.delete(request);
  if (!isDicomweb(request.url())) return;
  const response = await request.response();
  const entry = {
    url: request.url(), method: request.method(), status: response?.status(),
    type: response?.headers()['content-type'],
  };
  report.requests.push(entry);
  if (request.url().includes('/frames/') && response?.ok()) framesReceived += 1;
  // OHIF filters a search's answer again on what it shows: count what Huren itself matched.
  if (request.url().includes('PatientName=') && response?.ok()) {
    report.searches.push({ url: request.url(), matches: (await response.json()).length });
  }
  if (!response || response.status() >= 400) {
    // What was asked and what Huren answered, to name the fault (the token left out).
    const { authorization, ...headers } = request.headers();
    const body = await response?.text().catch(() => '');
    report.failed.push({ ...entry, headers, body: body?.slice(0, 500) });
  }
});

// Until no DICOMweb request has been open for `quiet` ms (OHIF loads a series in the background).
async function settle(quiet = 2000) {
  const deadline = Date.now() + timeout;
  let calmSince = Date.now();
  while (Date.now() < deadline) {
    if (inFlight.size > 0) calmSince = Date.now();
    else if (Date.now() - calmSince >= quiet) return;
    await page.waitForTimeout(200);
  }
  throw new Error(`DICOMweb requests still open after ${timeout} ms: ${[...inFlight].map(r => r.url())}`);
}

// The viewer is ready once a viewport holds a canvas, pixel data has come in since `before`
// frames had, and no more is coming.
async function viewerShown(name, before) {
  await page.locator('.cornerstone-viewport-element canvas').first().waitFor({ state: 'visible' });
  const deadline = Date.now() + timeout;
  while (framesReceived === before) {
    if (Date.now() > deadline) throw new Error(`no frame arrived for ${name} within ${timeout} ms`);
    await page.waitForTimeout(200);
  }
  await settle();
  await page.waitForTimeout(1500); // one more frame drawn after the last image came in
  await page.screenshot({ path: join(job.out, `${name}.png`) });
  report.viewports[name] = await page.locator('.cornerstone-viewport-element').first().boundingBox();
  // The series thumbnails: Huren's …/thumbnail JPEGs, shown as blob: images.
  const thumbnails = page.locator('img[src^="blob:"]');
  report.thumbnails[name] = await thumbnails.count() ? await thumbnails.first().boundingBox() : null;
}

try {
  const entry = new URL('/viewer', job.app);
  entry.searchParams.set('StudyInstanceUIDs', job.entry);
  entry.searchParams.set('token', job.token);
  await page.goto(entry.href);
  await viewerShown('entry', 0);

  await page.locator('[data-cy="return-to-work-list"]').first().click();
  for (const name of job.names) await page.getByText(name, { exact: false }).first().waitFor();
  await settle();
  await page.screenshot({ path: join(job.out, 'list.png') });
  report.listText = await page.locator('body').innerText();
  for (const name of job.names) report.names[name] = await page.getByText(name).first().boundingBox();

  for (const [index, { row, name }] of job.open.entries()) {
    if (index > 0) await page.locator('[data-cy="return-to-work-list"]').first().click();
    await page.getByText(row, { exact: true }).first().click();
    const before = framesReceived;
    await page.getByRole('button', { name: /basic viewer/i }).first().click();
    await viewerShown(name, before);
  }

  // A search in the list's patient filter: only `search.finds` is left.
  if (job.search) {
    await page.locator('[data-cy="return-to-work-list"]').first().click();
    await page.getByText(job.search.finds).first().waitFor();
    await page.getByRole('textbox').first().fill(job.search.text);
    for (const name of job.names.filter(n => n !== job.search.finds)) {
      await page.getByText(name).first().waitFor({ state: 'detached' });
    }
    await settle();
    await page.screenshot({ path: join(job.out, 'search.png') });
    report.found = await page.getByText(job.search.finds).first().boundingBox();
  }
} catch (error) {
  report.error = String(error);
  report.buttons = await page.getByRole('button').allInnerTexts().catch(() => []);
  await page.screenshot({ path: join(job.out, 'error.png') }).catch(() => {});
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
console.log(JSON.stringify(report));
