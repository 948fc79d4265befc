// browser.js drives two users through the chat demo behind wsplice in
// headless Chromium, with playwright-core. chat_test.go runs it:
//
//   node browser.js CONFIG.json
//
// CONFIG: {url, label, artifacts, chromium, backends: [name, name],
// scenario: "conversation" | "failure", spki, timeoutMs}; spki is the
// base64 SHA-256 of the wss certificate's public key.
//
// It talks to the test on stdout, one line each:
//   LOG text            progress, for the test log
//   KILL name           (failure scenario) kill backend NAME, then write
//                       "KILLED" to stdin
//   RESULT {json}       the outcome; the exit status is 0 only if ok
'use strict';

const fs = require('fs');
const path = require('path');
const readline = require('readline');
const { chromium } = require('playwright-core');

const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
// How long the other user may wait for a message: the issue's "within a
// second".
const deliveryMs = 1000;

const log = (...a) => process.stdout.write(`LOG ${a.join(' ')}\n`);
let resultSent = false;
function result(obj) {
	if (resultSent) return;
	resultSent = true;
	process.stdout.write(`RESULT ${JSON.stringify(obj)}\n`);
}

// stdin: the test's answers. Its end means the test is gone.
const answers = [];
let waiter = null;
const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (l) => { if (waiter) { const w = waiter; waiter = null; w(l); } else answers.push(l); });
rl.on('close', () => { if (!resultSent) shutdown('the test closed stdin', 1); });
function nextAnswer(timeoutMs) {
	if (answers.length) return Promise.resolve(answers.shift());
	return new Promise((resolve, reject) => {
		const t = setTimeout(() => { waiter = null; reject(new Error(`no answer from the test within ${timeoutMs} ms`)); }, timeoutMs);
		waiter = (l) => { clearTimeout(t); resolve(l); };
	});
}

let browser = null;
async function shutdown(why, code) {
	if (why) log(`stopping: ${why}`);
	result({ ok: false, error: why || 'stopped' });
	try { if (browser) await browser.close(); } catch { /* already gone */ }
	process.exit(code);
}
process.on('SIGTERM', () => shutdown('SIGTERM', 1));
process.on('SIGINT', () => shutdown('SIGINT', 1));
const overall = setTimeout(() => shutdown(`timed out after ${cfg.timeoutMs} ms`, 1), cfg.timeoutMs);

// One user: a browser context of its own (own cookies, storage, cache) and
// one page, with its WebSockets, console and errors recorded.
async function openUser(name) {
	const context = await browser.newContext({
		viewport: { width: 560, height: 640 },
	});
	const page = await context.newPage();
	const u = { name, context, page, websockets: [], console: [], errors: [], sent: [] };
	page.on('websocket', (ws) => {
		const e = { url: ws.url(), opened: new Date().toISOString(), framesSent: 0, framesReceived: 0, closed: null };
		u.websockets.push(e);
		ws.on('framesent', () => { e.framesSent++; });
		ws.on('framereceived', () => { e.framesReceived++; });
		ws.on('socketerror', (err) => { e.error = String(err); });
		ws.on('close', () => { e.closed = new Date().toISOString(); });
	});
	page.on('console', (m) => u.console.push(`${m.type()}: ${m.text()}`));
	page.on('pageerror', (err) => u.errors.push(String(err)));
	return u;
}

async function state(u) {
	return u.page.evaluate(() => ({
		backend: window.wspliceChat.backend,
		connected: window.wspliceChat.connected,
		connections: window.wspliceChat.connections,
		pending: window.wspliceChat.pending,
	}));
}

async function waitConnected(u, timeoutMs, notBackend) {
	await u.page.waitForFunction((nb) => window.wspliceChat && window.wspliceChat.connected &&
		window.wspliceChat.backend !== nb, notBackend || '', { timeout: timeoutMs, polling: 20 });
	return state(u);
}

async function setUsername(u) {
	await u.page.locator('#username').fill(u.name);
	await u.page.getByRole('button', { name: 'Set as username' }).click();
	const who = await u.page.locator('#whoami').textContent();
	if (who !== `You are ${u.name}.`) throw new Error(`${u.name}: after "Set as username" the page says "${who}"`);
}

async function send(u, text) {
	await u.page.locator('#message').fill(text);
	await u.page.getByRole('button', { name: 'Send' }).click();
	u.sent.push(text);
}

// shown waits until text is in u's conversation (confirmed, not pending),
// at most timeoutMs from `since`.
async function shown(u, text, since, timeoutMs) {
	const left = Math.max(1, since + timeoutMs - Date.now());
	try {
		await u.page.waitForFunction((t) => [...document.querySelectorAll('#messages li.msg .text')].some((e) => e.textContent === t),
			text, { timeout: left, polling: 10 });
	} catch (err) {
		throw new Error(`${u.name} did not see "${text}" within ${timeoutMs} ms`);
	}
	return Date.now() - since;
}

async function conversation(u) {
	return u.page.$$eval('#messages li.msg', (lis) => lis.map((li) => ({
		id: li.dataset.id,
		seq: Number(li.dataset.seq),
		user: li.dataset.user,
		text: li.querySelector('.text').textContent,
		time: li.querySelector('time').textContent,
		via: li.querySelector('.via').textContent,
	})));
}

const latencies = [];

// exchange: from sends text; to must see it within a second; from too.
async function exchange(from, to, text) {
	const t0 = Date.now();
	await send(from, text);
	const ms = await shown(to, text, t0, deliveryMs);
	await shown(from, text, t0, deliveryMs);
	latencies.push(ms);
}

// checkConversation: both pages show exactly the messages sent, once, in
// the same order, each user's in the order they were typed.
async function checkConversation(users) {
	const views = await Promise.all(users.map(conversation));
	const want = new Set(users.flatMap((u) => u.sent));
	for (const [i, v] of views.entries()) {
		const u = users[i];
		const texts = v.map((m) => m.text);
		if (new Set(texts).size !== texts.length) throw new Error(`${u.name}'s page shows a message twice: ${JSON.stringify(texts)}`);
		const missing = [...want].filter((t) => !texts.includes(t));
		if (missing.length) throw new Error(`${u.name}'s page lacks ${JSON.stringify(missing)}`);
		if (texts.length !== want.size) throw new Error(`${u.name}'s page shows ${texts.length} messages, want ${want.size}`);
		for (const w of users) {
			const order = v.filter((m) => m.user === w.name).map((m) => m.text);
			if (JSON.stringify(order) !== JSON.stringify(w.sent)) {
				throw new Error(`${u.name}'s page shows ${w.name}'s messages as ${JSON.stringify(order)}, want ${JSON.stringify(w.sent)}`);
			}
		}
		for (const m of v) {
			if (!m.time || !m.via.startsWith('via ')) throw new Error(`${u.name}'s page shows ${JSON.stringify(m)} without time or backend`);
		}
	}
	const a = JSON.stringify(views[0].map((m) => m.id));
	const b = JSON.stringify(views[1].map((m) => m.id));
	if (a !== b) throw new Error(`the two pages show different orders:\n${a}\n${b}`);
	return views[0];
}

async function screenshots(users, label) {
	const shots = [];
	for (const u of users) {
		const file = path.join(cfg.artifacts, `${label}-${u.name}.png`);
		await u.page.screenshot({ path: file });
		shots.push({ name: u.name, file, data: fs.readFileSync(file).toString('base64') });
	}
	// Both windows side by side in one picture.
	const ctx = await browser.newContext({ viewport: { width: 1160, height: 700 } });
	const page = await ctx.newPage();
	await page.setContent(`<body style="margin:0;padding:10px;background:#d7dbe2;font:14px system-ui;display:flex;gap:20px">` +
		shots.map((s) => `<figure style="margin:0"><figcaption style="padding:4px 0">${s.name}'s window</figcaption>` +
			`<img style="border:1px solid #888" src="data:image/png;base64,${s.data}"></figure>`).join('') + `</body>`);
	const both = path.join(cfg.artifacts, `${label}-both.png`);
	await page.screenshot({ path: both, fullPage: true });
	await ctx.close();
	return both;
}

async function main() {
	fs.mkdirSync(cfg.artifacts, { recursive: true });
	browser = await chromium.launch({
		executablePath: cfg.chromium,
		headless: true,
		timeout: 30000,
		// Playwright gives the browser a fresh --user-data-dir of its
		// own, under TMPDIR. The rest keeps Chromium off the network:
		// this machine has none, and Chromium's own connections only
		// add noise and delay.
		args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
			'--disable-background-networking', '--disable-component-update', '--disable-sync',
			'--disable-dev-shm-usage',
			// wss: trust the test's certificate by its key, and nothing
			// else (honoured because Playwright sets --user-data-dir).
			...(cfg.spki ? [`--ignore-certificate-errors-spki-list=${cfg.spki}`] : [])],
	});
	log(`chromium ${browser.version()}`);
	const alice = await openUser('alice');
	const bob = await openUser('bob');
	const users = [alice, bob];
	const out = { ok: false, label: cfg.label, backends: {}, websockets: {} };
	try {
		// One after the other, so round-robin alternates their sockets.
		for (const u of users) {
			const resp = await u.page.goto(cfg.url, { timeout: 10000 });
			if (!resp || resp.status() !== 200) throw new Error(`${u.name}: GET ${cfg.url}: ${resp && resp.status()}`);
			const s = await waitConnected(u, 10000);
			out.backends[u.name] = s.backend;
			log(`${u.name}'s page is on ${s.backend}`);
		}
		if (!cfg.backends.includes(out.backends.alice) || !cfg.backends.includes(out.backends.bob)) {
			throw new Error(`pages are on ${JSON.stringify(out.backends)}, want backends among ${cfg.backends}`);
		}
		if (out.backends.alice === out.backends.bob) {
			throw new Error(`both pages' WebSockets are on ${out.backends.alice}: round-robin should have put them on different backends`);
		}
		for (const u of users) await setUsername(u);

		// Turn by turn, then both at once.
		for (let i = 1; i <= 3; i++) {
			await exchange(alice, bob, `Hi Bob, this is Alice (${i})`);
			await exchange(bob, alice, `Hello Alice, Bob here (${i})`);
		}
		const t0 = Date.now();
		await Promise.all(users.map(async (u) => {
			for (let i = 1; i <= 3; i++) await send(u, `${u.name} types fast (${i})`);
		}));
		for (const u of users) for (const w of users) for (const text of w.sent) await shown(u, text, t0, deliveryMs + 1000);
		await checkConversation(users);
		log(`conversation: ${alice.sent.length + bob.sent.length} messages, slowest delivery ${Math.max(...latencies)} ms`);

		if (cfg.scenario === 'failure') {
			const victim = out.backends.bob;
			const before = await state(bob);
			process.stdout.write(`KILL ${victim}\n`);
			const ans = await nextAnswer(15000);
			if (ans !== 'KILLED') throw new Error(`the test answered "${ans}" to KILL`);
			const tKill = Date.now();
			log(`${victim} killed; typing on while it is gone`);
			// Typed while Bob's socket is dead or reconnecting: they must
			// still arrive, once.
			await send(bob, 'bob: did the server just go away?');
			await send(alice, 'alice: I am still here');
			const s = await waitConnected(bob, 20000, victim);
			if (s.connections <= before.connections) throw new Error(`bob's page did not reconnect: ${JSON.stringify(s)}`);
			out.reconnectMs = Date.now() - tKill;
			out.backendsAfter = { alice: (await state(alice)).backend, bob: s.backend };
			log(`bob's page reconnected to ${s.backend} ${out.reconnectMs} ms after the kill`);
			const shownNote = await bob.page.locator('#backend').textContent();
			if (shownNote !== s.backend) throw new Error(`bob's page shows backend "${shownNote}", want ${s.backend}`);
			for (const u of users) for (const text of ['bob: did the server just go away?', 'alice: I am still here']) {
				await shown(u, text, Date.now(), 5000);
			}
			for (let i = 1; i <= 3; i++) {
				await exchange(bob, alice, `Bob again after the reconnect (${i})`);
				await exchange(alice, bob, `Alice answers after the reconnect (${i})`);
			}
			await checkConversation(users);
			const pend = await Promise.all(users.map(async (u) => (await state(u)).pending));
			if (pend.some((n) => n !== 0)) throw new Error(`messages still pending after the reconnect: ${pend}`);
		}

		out.messages = (await conversation(alice)).length;
		out.slowestDeliveryMs = Math.max(...latencies);
		for (const u of users) {
			if (u.errors.length) throw new Error(`${u.name}'s page raised: ${u.errors.join('; ')}`);
			const ok = u.websockets.filter((w) => w.url.endsWith('/ws') && w.framesReceived > 0 && w.framesSent > 0);
			if (!ok.length) throw new Error(`${u.name}'s network log shows no WebSocket that carried frames: ${JSON.stringify(u.websockets)}`);
		}
		if (cfg.scenario === 'failure' && bob.websockets.length < 2) {
			throw new Error(`bob's network log shows ${bob.websockets.length} WebSocket, want the first and the reconnected one`);
		}
		out.ok = true;
	} catch (err) {
		out.error = err.message;
	} finally {
		for (const u of users) out.websockets[u.name] = u.websockets;
		try {
			out.screenshot = await screenshots(users, cfg.label);
		} catch (err) {
			log(`screenshot failed: ${err.message}`);
		}
		const logFile = path.join(cfg.artifacts, `${cfg.label}-browser.json`);
		fs.writeFileSync(logFile, JSON.stringify({
			result: out,
			users: users.map((u) => ({ name: u.name, websockets: u.websockets, console: u.console, errors: u.errors, sent: u.sent })),
		}, null, 2));
	}
	return out;
}

main().then(async (out) => {
	clearTimeout(overall);
	result(out);
	try { await browser.close(); } catch { /* gone */ }
	process.exit(out.ok ? 0 : 1);
}, async (err) => {
	clearTimeout(overall);
	result({ ok: false, error: err.stack || String(err) });
	try { if (browser) await browser.close(); } catch { /* gone */ }
	process.exit(1);
});
