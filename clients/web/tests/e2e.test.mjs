// The web UI end to end: the built page (dist/) served by a real `deep-recall serve` with the
// packaged models, driven in headless Chromium (Debian's `chromium`, playwright-core).
// DEEP_RECALL_SCREENSHOTS=DIR also saves screenshots there (`npm run screenshots` → docs/).
import assert from 'node:assert/strict';
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

import { startServer, token } from '../../typescript/test/server.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const dist = path.resolve(here, '../dist');
const chromiumPath = process.env.DEEP_RECALL_CHROMIUM || '/usr/bin/chromium';
const shots = process.env.DEEP_RECALL_SCREENSHOTS
  ? path.resolve(process.cwd(), process.env.DEEP_RECALL_SCREENSHOTS)
  : null;

let browser;
const servers = [];

async function serve(extra) {
  const s = await startServer(extra, { DEEP_RECALL__WEB__DIR: dist });
  servers.push(s);
  return s;
}

async function screenshot(page, name) {
  if (!shots) return;
  mkdirSync(shots, { recursive: true });
  await page.screenshot({ path: path.join(shots, `${name}.png`) });
}

before(async () => {
  assert.ok(existsSync(path.join(dist, 'index.html')), 'run `npm run build` first');
  browser = await chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'],
  });
});

after(async () => {
  await browser?.close();
  for (const s of servers) s.stop();
});

/** Sends `text` in the open chat; resolves to the lengths the answer had as it grew. */
async function ask(page, text) {
  const answers = page.getByTestId('answer');
  const before = await answers.count();
  await page.getByTestId('message').fill(text);
  await page.getByTestId('message').press('Enter');
  const answer = answers.nth(before);
  await answer.waitFor();
  // Record the answer's length at every change until it is complete.
  const lengths = await answer.evaluate(
    (el) =>
      new Promise((resolve) => {
        const seen = [el.textContent.length];
        const done = () => el.dataset.streaming === 'false';
        if (done()) return resolve(seen);
        new MutationObserver((_, observer) => {
          seen.push(el.textContent.length);
          if (done()) {
            observer.disconnect();
            resolve(seen);
          }
        }).observe(el, { subtree: true, childList: true, characterData: true, attributes: true });
      }),
  );
  return { answer, lengths };
}

/** Waits until `locator` matches `n` elements. */
async function count(locator, n) {
  for (let i = 0; i < 100; i++) {
    if ((await locator.count()) === n) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.equal(await locator.count(), n);
}

async function switchUser(page, user) {
  await page.getByTestId('user-input').fill(user);
  await page.getByRole('button', { name: 'Switch' }).click();
  await page.getByTestId('message').waitFor();
}

describe('anonymous development mode', () => {
  let base;
  let page;

  before(async () => {
    base = (await serve(['--allow-anonymous'])).url;
    page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    await page.goto(base);
  });

  test('the page opens straight into a chat; an answer streams token by token', async () => {
    await page.getByTestId('message').waitFor();
    await switchUser(page, 'alice');
    const { answer, lengths } = await ask(
      page,
      'Remember this: my cat is called Miso and she loves tuna.',
    );
    const growth = new Set(lengths.filter((n) => n > 1));
    assert.ok(growth.size >= 3, `the answer grew in steps: ${lengths}`);
    assert.ok((await answer.textContent()).trim().length > 0);
    await page.getByTestId('sessions').getByRole('button').first().waitFor();
  });

  test('a fact told in one session is in the context of an answer in a later one', async () => {
    await page.getByRole('button', { name: 'New chat' }).click();
    await ask(page, 'What is the name of my cat?');
    const context = page.getByTestId('context-item');
    await context.first().waitFor();
    const texts = await context.allTextContents();
    assert.ok(
      texts.some((t) => t.includes('my cat is called Miso')),
      `the context shows the earlier message: ${texts}`,
    );
    assert.match(texts.join(' '), /score \d\.\d{3}/);
    await count(page.getByTestId('sessions').getByRole('listitem'), 2);
    await screenshot(page, 'chat');
  });

  test('a session opened while another loads is the one shown', async () => {
    const list = page.getByTestId('sessions').getByRole('button');
    const conversation = page.locator('section.conversation');
    const turns = page.getByTestId('turns');
    const loading = page.getByText('Loading messages…');
    // Each session as it shows when opened alone.
    const shownAlone = async (i) => {
      await list.nth(i).click();
      await loading.waitFor({ state: 'detached' });
      return { label: await conversation.getAttribute('aria-label'), turns: await turns.innerText() };
    };
    const first = await shownAlone(0);
    const second = await shownAlone(1);
    assert.notEqual(first.turns, second.turns);
    // The second one's messages come slowly, and the first is opened meanwhile.
    const slow = `"session":"${second.label.replace('Conversation ', '')}"`;
    await page.route('**/graphql', async (route) => {
      if ((route.request().postData() ?? '').includes(slow)) {
        await new Promise((r) => setTimeout(r, 1500));
      }
      await route.continue();
    });
    await list.nth(1).click();
    await list.nth(0).click();
    await new Promise((r) => setTimeout(r, 2500));
    await page.unroute('**/graphql');
    assert.equal(await conversation.getAttribute('aria-label'), first.label);
    assert.equal(await turns.innerText(), first.turns);
  });

  test('Enter that ends an input method\'s composition does not send', async () => {
    const box = page.getByTestId('message');
    const questions = await page.getByTestId('question').count();
    await box.fill('こんにちは');
    await box.evaluate((el) =>
      el.dispatchEvent(
        new KeyboardEvent('keydown', { key: 'Enter', isComposing: true, bubbles: true, cancelable: true }),
      ),
    );
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(await box.inputValue(), 'こんにちは');
    assert.equal(await page.getByTestId('question').count(), questions);
    await box.fill('');
  });

  test('a message the server never took is given back to send again', async () => {
    // A page whose WebSocket (the chat's way) closes at once.
    const p = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    await p.routeWebSocket(/\/graphql/, (ws) => ws.close({ code: 1011, reason: 'down' }));
    await p.goto(base);
    const box = p.getByTestId('message');
    await box.waitFor();
    await box.fill('Please remember that my bike is green.');
    await box.press('Enter');
    await p.getByTestId('answer').getByText('failed', { exact: true }).waitFor();
    assert.equal(await box.inputValue(), 'Please remember that my bike is green.');
    await p.close();
  });

  test('deleting that memory in the browser removes it', async () => {
    await page.getByRole('button', { name: 'Memories' }).click();
    await page.getByTestId('memory-search').fill('cat called Miso');
    await page.getByTestId('memory-search').press('Enter');
    // The search's results carry scores (the full list before it does not).
    const item = page
      .getByTestId('memory-item')
      .filter({ hasText: 'my cat is called Miso' })
      .filter({ hasText: /score \d\.\d{3}/ });
    await item.waitFor();
    await screenshot(page, 'memories');
    await item.getByRole('button', { name: /Delete memory/ }).click();
    await item.waitFor({ state: 'detached' });
    // Listed again, it is gone for good.
    await page.getByRole('button', { name: 'Show all' }).click();
    await page.getByRole('button', { name: 'Show all' }).waitFor({ state: 'detached' });
    await page.getByTestId('memory-item').first().waitFor();
    const left = await page.getByTestId('memory-item').allTextContents();
    assert.ok(left.length >= 2, `${left}`);
    assert.ok(!left.some((t) => t.includes('my cat is called Miso')), `${left}`);
  });

  test('another user sees none of the first user\'s sessions or memories', async () => {
    await page.getByRole('button', { name: 'Chat' }).click();
    await switchUser(page, 'bob');
    await page.getByText('No sessions yet.').waitFor();
    await page.getByRole('button', { name: 'Memories' }).click();
    await page.getByText('No memories yet.').waitFor();
    await page.getByTestId('memory-search').fill('cat Miso tuna');
    await page.getByTestId('memory-search').press('Enter');
    await page.getByText('Nothing found.').waitFor();
    // Back to alice: her sessions are there.
    await page.getByRole('button', { name: 'Chat' }).click();
    await switchUser(page, 'alice');
    await count(page.getByTestId('sessions').getByRole('listitem'), 2);
  });

  test('a user name the server refuses is not switched to, and is not where the page starts', async () => {
    await page.getByTestId('user-input').fill('x'.repeat(300));
    await page.getByRole('button', { name: 'Switch' }).click();
    const error = page.getByTestId('user-error');
    await error.waitFor();
    assert.match(await error.textContent(), /not accepted \(UNAUTHENTICATED/);
    await page.reload();
    await page.getByTestId('message').waitFor();
    assert.equal(await page.getByTestId('user-input').inputValue(), 'alice');
    await count(page.getByTestId('sessions').getByRole('listitem'), 2);
  });

  test('a stopped answer ends at once; "forget me" asks first, then empties everything', async () => {
    await page.getByTestId('message').fill('Tell me a very long story about the sea.');
    await page.getByTestId('message').press('Enter');
    const stop = page.getByRole('button', { name: 'Stop' });
    await stop.waitFor();
    await page.getByTestId('answer').last().filter({ hasText: /\w\w/ }).waitFor();
    await stop.click();
    await page.getByRole('button', { name: 'Send' }).waitFor();
    assert.equal(await page.getByTestId('answer').last().getAttribute('data-streaming'), 'false');
    // A third session now (the page opened a new one for alice).
    const sessions = page.getByTestId('sessions').getByRole('listitem');
    await count(sessions, 3);

    await page.getByRole('button', { name: 'Forget me' }).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Cancel' }).click();
    assert.equal(await sessions.count(), 3);
    await page.getByRole('button', { name: 'Forget me' }).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Delete everything' }).click();
    await page.getByText(/Forgotten: 3 sessions/).waitFor();
    await page.getByText('No sessions yet.').waitFor();
  });

  test('on a phone-width screen everything fits', async () => {
    const phone = await browser.newPage({ viewport: { width: 390, height: 844 } });
    await phone.goto(base);
    await phone.getByTestId('message').waitFor();
    await switchUser(phone, 'carol');
    await ask(phone, 'Hello from my phone.');
    const overflow = await phone.evaluate(
      () => document.documentElement.scrollWidth - document.documentElement.clientWidth,
    );
    assert.equal(overflow, 0, 'no sideways scrolling');
    assert.ok(await phone.getByTestId('message').isVisible());
    assert.ok(await phone.getByRole('button', { name: 'Send' }).isVisible());
    await screenshot(phone, 'phone');
    await phone.close();
  });
});

describe('with tokens', () => {
  test('the page asks for a token, refuses a bad one and signs in with a good one', async () => {
    const server = await serve(['--no-chat']);
    const page = await browser.newPage();
    await page.goto(server.url);
    await page.getByLabel('Access token').fill('not-a-key');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByText(/That token was not accepted \(UNAUTHENTICATED/).waitFor();
    await page.getByLabel('Access token').fill(token('dana'));
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByTestId('current-user').filter({ hasText: 'dana' }).waitFor();
    // Without a chat model, sending says why.
    await page.getByTestId('message').fill('hi');
    await page.getByTestId('message').press('Enter');
    await page.getByRole('alert').filter({ hasText: 'UNAVAILABLE' }).waitFor();
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.getByLabel('Access token').waitFor();
    // A token that expires while the page is open asks for a new one at the next action
    // (it showed an error, and every action failed, until the user signed out).
    await page.getByLabel('Access token').fill(token('dana', 1));
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByTestId('current-user').filter({ hasText: 'dana' }).waitFor();
    // (Past its expiry and the server's 5 s of leeway.)
    await new Promise((r) => setTimeout(r, 7500));
    await page.getByRole('button', { name: 'Memories' }).click();
    await page.getByText(/That token was not accepted \(UNAUTHENTICATED/).waitFor();
    await page.close();
  });
});
