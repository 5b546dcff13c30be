// The console in a real headless Chromium, as an operator uses it: log in,
// find GitHub delivery X, see its failed attempt, replay it from the
// dead-letter page and watch it turn delivered; the live tail; keys; and
// what must be refused. Run by tests/it/console.rs against a real daemon,
// which passes:
//   HG_ADMIN     http://127.0.0.1:PORT (the admin listener)
//   HG_TOKEN     the admin token
//   HG_DELIVERY  the GitHub delivery id of the event whose delivery is dead
//   HG_DEAD      that dead delivery's id
//   HG_INGRESS   http://127.0.0.1:PORT/hooks/github
//   HG_SECRET    the github source's secret
//   HG_SHOTS     where to write a screenshot of each page
// Exits 0 when every step held; otherwise prints the step that failed.
import { chromium } from 'playwright-core';
import { createHmac, randomUUID } from 'node:crypto';

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const base = env('HG_ADMIN');
const token = env('HG_TOKEN');
const deliveryId = env('HG_DELIVERY');
const deadId = env('HG_DEAD');
const shots = env('HG_SHOTS');
const browserPath = process.env.HG_CHROMIUM || '/usr/bin/chromium';

let step = 'start';
const expect = (cond, what) => {
  if (!cond) throw new Error(`${step}: ${what}`);
};

const browser = await chromium.launch({
  executablePath: browserPath,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const problems = [];
try {
  const context = await browser.newContext({ viewport: { width: 1366, height: 850 } });
  const page = await context.newPage();
  // A CSP violation or a script error shows here.
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`console: ${m.text()}`); });
  page.on('pageerror', (e) => problems.push(`page error: ${e}`));
  const shot = (name) => page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });

  step = 'a page without the login cookie redirects to the login form';
  await page.goto(`${base}/dead`);
  expect(new URL(page.url()).pathname === '/login', `at ${page.url()}`);
  expect(new URL(page.url()).searchParams.get('next') === '/dead', `next in ${page.url()}`);
  await shot('login');

  step = 'a wrong token is refused with what to do';
  let expected = problems.length;
  await page.fill('#token', 'not-the-token');
  await page.click('button[type=submit]');
  await page.waitForSelector('[role=alert]');
  expect((await page.textContent('[role=alert]')).includes('not the admin token'), 'the alert');
  // The 401 is logged as a failed load: that one is meant.
  problems.splice(expected);

  step = 'log in, back where we were going';
  await page.fill('#token', token);
  await page.click('button[type=submit]');
  await page.waitForURL(`${base}/dead`);
  const cookies = await context.cookies();
  const session = cookies.find((c) => c.name === 'hookgate_session');
  expect(session && session.httpOnly && session.sameSite === 'Strict', JSON.stringify(cookies));

  step = 'find the event by its delivery id';
  await page.goto(`${base}/`);
  await page.keyboard.press('/');
  expect(await page.evaluate(() => document.activeElement.name) === 'delivery_id', 'the / key focuses the search');
  await page.keyboard.type(deliveryId);
  await page.keyboard.press('Enter');
  await page.waitForURL((u) => u.searchParams.get('delivery_id') === deliveryId);
  const rows = page.locator('tbody tr[data-href]');
  expect(await rows.count() === 1, `${await rows.count()} rows`);
  await shot('events');

  step = 'open it from the keyboard and see the failed attempt';
  await page.keyboard.press('j');
  await page.keyboard.press('Enter');
  await page.waitForURL(/\/events\/\d+$/);
  const eventUrl = page.url();
  const delivery = page.locator(`#delivery-${deadId}`);
  expect(await delivery.locator('[data-status]').textContent() === 'dead', 'the delivery is dead');
  const attempt = await delivery.locator('ol.timeline li').first().textContent();
  expect(attempt.includes('HTTP 404') && attempt.includes('channel_not_found'), attempt);
  expect((await page.textContent('pre.payload')).includes('"zen"'), 'the payload, pretty-printed');
  await shot('event');

  step = 'the sinks page says the sink is disabled, and why';
  await page.goto(`${base}/sinks`);
  const chat = await page.locator('tbody tr', { hasText: 'chat' }).first().textContent();
  expect(chat.includes('disabled') && chat.includes('channel_not_found'), chat);
  await shot('sinks');

  step = 'a replay without the CSRF token is refused';
  expected = problems.length;
  const refused = await page.evaluate(async (id) => {
    const r = await fetch(`/dead/${id}/replay`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: 'confirmed=1',
    });
    return r.status;
  }, deadId);
  expect(refused === 403, `status ${refused}`);
  const apiRefused = await page.evaluate(async (id) => {
    const r = await fetch(`/api/dead/${id}/replay`, { method: 'POST', headers: { 'x-hookgate-csrf': '1' } });
    return r.status;
  }, deadId);
  expect(apiRefused === 403, `API status ${apiRefused}`);
  problems.splice(expected);

  step = 'the dead-letter page lists it; replaying by filter shows the count first';
  await page.goto(`${base}/dead?sink=chat`);
  expect(await page.locator(`button[data-replay="${deadId}"]`).count() === 1, 'its row');
  await shot('dead');
  await page.click('form.replay-all button[type=submit]');
  await page.waitForURL(`${base}/dead/replay`);
  const heading = await page.textContent('h1');
  expect(/^Replay 1 dead delivery\?$/.test(heading.trim()), heading);
  await shot('confirm');
  await page.click('a:text("Cancel")');

  step = 'replay it from its row';
  await page.goto(`${base}/dead?sink=chat`);
  await page.click(`button[data-replay="${deadId}"]`);
  await page.waitForSelector('[role=status]');
  expect((await page.textContent('h1')).includes('Replayed 1 dead delivery'), await page.textContent('h1'));
  await shot('replayed');

  step = 'watch it turn delivered';
  await page.goto(eventUrl);
  await page.waitForFunction(
    (id) => document.querySelector(`#delivery-${id} [data-status]`)?.textContent === 'delivered',
    deadId,
    { timeout: 20000, polling: 500 },
  ).catch(async () => {
    // The page refreshes itself while a delivery is pending; reload once
    // in case it was already delivered when the page first loaded.
    await page.reload();
  });
  expect(await page.locator(`#delivery-${deadId} [data-status]`).textContent() === 'delivered', 'delivered');
  await shot('delivered');

  step = 'the live tail shows an event as it arrives';
  await page.goto(`${base}/tail`);
  await page.waitForSelector('#tail-rows tr');
  const fresh = `tail-${randomUUID()}`;
  const body = JSON.stringify({ zen: 'Keep it logically awesome.', hook_id: 1 });
  const signature = 'sha256=' + createHmac('sha256', env('HG_SECRET')).update(body).digest('hex');
  const posted = await fetch(env('HG_INGRESS'), {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      'x-github-event': 'ping',
      'x-github-delivery': fresh,
      'x-hub-signature-256': signature,
    },
    body,
  });
  expect(posted.status === 202, `the webhook got ${posted.status}`);
  await page.waitForSelector(`#tail-rows tr:has-text("${fresh}")`, { timeout: 10000 });
  await shot('tail');

  step = 'g then d goes to the dead letters';
  await page.keyboard.press('g');
  await page.keyboard.press('d');
  await page.waitForURL(`${base}/dead`);

  step = 'log out, and the pages are closed again';
  await page.click('text=Log out');
  await page.waitForURL(/\/login$/);
  await page.goto(`${base}/sinks`);
  expect(new URL(page.url()).pathname === '/login', `at ${page.url()}`);

  step = 'no problem in any page (scripts, Content-Security-Policy)';
  expect(problems.length === 0, problems.join('\n'));
  console.log('console flow: every step held');
} catch (e) {
  console.error(String(e.stack || e));
  if (problems.length) console.error(problems.join('\n'));
  process.exitCode = 1;
} finally {
  await browser.close();
}
