// The chat page: one WebSocket to /ws on the host the page came from (the
// balancer), reconnected with backoff whenever it closes. Messages carry an
// id made here; a message stays "pending" until it comes back from the
// server, and every pending message is sent again after a reconnect (the
// server publishes each id once), so nothing typed is lost to a backend
// that died. Messages are shown in the order of the sequence number Redis
// gives them, once per id.
'use strict';

(() => {
	const $ = (id) => document.getElementById(id);
	const el = {
		status: $('status'),
		statusText: $('status-text'),
		backend: $('backend'),
		backendNote: $('backend-note'),
		userForm: $('user-form'),
		username: $('username'),
		whoami: $('whoami'),
		log: $('log'),
		empty: $('empty'),
		messages: $('messages'),
		pending: $('pending'),
		sendForm: $('send-form'),
		message: $('message'),
		send: $('send'),
	};

	const wsURL = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws';
	// Reconnect delays: doubling from minDelay up to maxDelay, with jitter
	// so that the clients of a dead backend do not come back in step.
	const minDelay = 250;
	const maxDelay = 5000;
	// With no frame for this long (the server pings every 25 s and answers
	// ours), the connection is taken for dead.
	const heartbeat = 10000;
	const deadAfter = 35000;

	const clientId = randomId();
	let counter = 0;
	let username = load('wsplice-chat-username');

	let ws = null; // the current socket, or null between attempts
	let ready = false; // the current socket got the server's hello
	let attempt = 0; // failed attempts since the last hello
	let timer = null;
	let lastFrame = 0;
	let backend = '';
	let connections = 0; // hellos received: 1 + reconnects
	const shown = new Map(); // id -> {seq, li}
	const pending = []; // {msg, li}, in the order they were typed

	function randomId() {
		const b = new Uint8Array(9);
		crypto.getRandomValues(b);
		return btoa(String.fromCharCode(...b)).replace(/\+/g, '-').replace(/\//g, '_');
	}

	function load(key) {
		try { return localStorage.getItem(key) || ''; } catch { return ''; }
	}

	function store(key, value) {
		try { localStorage.setItem(key, value); } catch { /* private mode */ }
	}

	function setStatus(state, text) {
		el.status.dataset.state = state;
		el.statusText.textContent = text;
		document.body.dataset.state = state;
	}

	function connect() {
		clearTimeout(timer);
		timer = null;
		ready = false;
		setStatus('connecting', attempt ? `reconnecting (attempt ${attempt + 1})…` : 'connecting…');
		let sock;
		try {
			sock = new WebSocket(wsURL);
		} catch (err) {
			retry(`cannot open ${wsURL}: ${err.message}`);
			return;
		}
		ws = sock;
		sock.onmessage = (ev) => {
			if (sock !== ws) return;
			lastFrame = Date.now();
			let f;
			try { f = JSON.parse(ev.data); } catch { return; }
			switch (f.type) {
			case 'hello': onHello(f.backend); break;
			case 'history': (f.messages || []).forEach(addMessage); break;
			case 'message': addMessage(f.message); break;
			case 'error': onError(f); break;
			}
		};
		sock.onclose = (ev) => {
			if (sock !== ws) return;
			ws = null;
			ready = false;
			retry(ev.code === 1006 ? 'connection lost' : `closed (${ev.code}${ev.reason ? ' ' + ev.reason : ''})`);
		};
		// An error is always followed by a close.
		sock.onerror = () => {};
	}

	function onHello(name) {
		const previous = backend;
		backend = name;
		ready = true;
		attempt = 0;
		connections++;
		el.backend.textContent = name;
		document.body.dataset.backend = name;
		document.body.dataset.connections = String(connections);
		el.backendNote.textContent = previous && previous !== name ? `(reconnected; was ${previous})` :
			previous ? '(reconnected)' : '';
		setStatus('open', 'connected');
		// Everything not yet seen back from the server, in typing order.
		for (const p of pending) ws.send(JSON.stringify(p.msg));
	}

	// retry drops the current socket, if any, and connects again later.
	function retry(why) {
		if (ws) {
			const old = ws;
			ws = null;
			old.onclose = old.onmessage = null;
			old.close();
		}
		ready = false;
		const delay = Math.min(maxDelay, minDelay * 2 ** attempt) * (0.5 + Math.random() / 2);
		attempt++;
		setStatus('closed', `${why}: reconnecting in ${(delay / 1000).toFixed(1)} s`);
		clearTimeout(timer);
		timer = setTimeout(connect, delay);
	}

	setInterval(() => {
		if (!ws || !ready) return;
		if (Date.now() - lastFrame > deadAfter) {
			retry('no answer from the server');
			return;
		}
		ws.send('{"type":"ping"}');
	}, heartbeat);

	function formatTime(ms) {
		return new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
	}

	function render(m, isPending) {
		const li = document.createElement('li');
		li.className = 'msg' + (m.user === username ? ' mine' : '') + (isPending ? ' pending' : '');
		li.dataset.id = m.id;
		li.dataset.user = m.user;
		const meta = document.createElement('div');
		meta.className = 'meta';
		const user = document.createElement('span');
		user.className = 'user';
		user.textContent = m.user;
		meta.append(user);
		if (isPending) {
			const note = document.createElement('span');
			note.textContent = 'sending…';
			meta.append(note);
		} else {
			li.dataset.seq = String(m.seq);
			const time = document.createElement('time');
			time.className = 'time';
			time.dateTime = new Date(m.time).toISOString();
			time.textContent = formatTime(m.time);
			const via = document.createElement('span');
			via.className = 'via';
			via.textContent = `via ${m.backend}`;
			meta.append(time, via);
		}
		const text = document.createElement('div');
		text.className = 'text';
		text.textContent = m.text;
		li.append(meta, text);
		return li;
	}

	// addMessage shows m once, in sequence order, and settles it if it was
	// one of ours still pending.
	function addMessage(m) {
		if (!m || typeof m.id !== 'string' || shown.has(m.id)) return;
		const i = pending.findIndex((p) => p.msg.id === m.id);
		if (i >= 0) {
			pending[i].li.remove();
			pending.splice(i, 1);
		}
		const stick = el.log.scrollTop + el.log.clientHeight >= el.log.scrollHeight - 40;
		const li = render(m, false);
		// Nearly always the last: walk back from the end.
		let after = el.messages.lastElementChild;
		while (after && Number(after.dataset.seq) > m.seq) after = after.previousElementSibling;
		if (after) after.after(li); else el.messages.prepend(li);
		shown.set(m.id, { seq: m.seq, li });
		el.empty.hidden = true;
		if (stick) el.log.scrollTop = el.log.scrollHeight;
	}

	// onError: the server refused something; a refused message is not
	// sent again.
	function onError(f) {
		const i = f.id ? pending.findIndex((p) => p.msg.id === f.id) : -1;
		if (i < 0) {
			showError(`server: ${f.error}`);
			return;
		}
		const li = pending[i].li;
		pending.splice(i, 1);
		li.classList.add('failed');
		li.querySelector('.meta span:last-child').textContent = `not sent: ${f.error}`;
	}

	function showError(text) {
		el.whoami.textContent = text;
		el.whoami.classList.add('error');
	}

	function showUser() {
		el.whoami.classList.remove('error');
		el.whoami.textContent = username ? `You are ${username}.` : 'Choose a username to start chatting.';
		el.send.disabled = !username;
		if (username) el.username.value = username;
	}

	el.userForm.addEventListener('submit', (ev) => {
		ev.preventDefault();
		const name = el.username.value.trim();
		if (!name) {
			showError('A username cannot be empty.');
			return;
		}
		username = name.slice(0, 32);
		store('wsplice-chat-username', username);
		showUser();
		el.message.focus();
	});

	el.sendForm.addEventListener('submit', (ev) => {
		ev.preventDefault();
		const text = el.message.value.trim();
		if (!text || !username) return;
		const msg = { type: 'message', id: `${clientId}-${++counter}`, user: username, text };
		const li = render(msg, true);
		el.pending.append(li);
		pending.push({ msg, li });
		el.empty.hidden = true;
		el.log.scrollTop = el.log.scrollHeight;
		if (ws && ready) ws.send(JSON.stringify(msg));
		el.message.value = '';
		el.message.focus();
	});

	// For tests and the curious: window.wspliceChat.reconnect() opens a
	// new WebSocket, which the balancer may send to another backend.
	window.wspliceChat = {
		get backend() { return backend; },
		get connected() { return ready; },
		get connections() { return connections; },
		get pending() { return pending.length; },
		reconnect() { attempt = 0; retry('reconnect asked'); clearTimeout(timer); connect(); },
	};

	showUser();
	connect();
})();
