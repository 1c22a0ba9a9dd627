/* Browser side of xmppd's browser tests: log in with Strophe.js over BOSH or WebSocket (chosen by the
 * service URL's scheme), send initial presence, optionally send one chat message, and record everything
 * on window.xmppTest for the WebDriver in tests/web/driver.py:
 *
 *   xmppTest.status      last Strophe status name ("CONNECTING", "CONNECTED", "DISCONNECTED", ...)
 *   xmppTest.statuses    every status name in order, with its condition: ["CONNFAIL:host-unknown", ...]
 *   xmppTest.connected   true between CONNECTED and DISCONNECTED
 *   xmppTest.jid         the bound full JID once connected
 *   xmppTest.messages    received <message/>s: {from, type, body, xml}
 *   xmppTest.presences   received <presence/>s: {from, type, xml}
 *   xmppTest.sent        sent message ids
 *   xmppTest.errors      error texts (script errors, protocol errors, error stanzas)
 *   xmppTest.traffic     raw XML in and out: "IN <...>" / "OUT <...>"
 *   xmppTest.send(to, body)   send a chat message; returns its id
 *   xmppTest.join(room, nick) enter a MUC room (XEP-0045 s7.2) as room/nick
 *   xmppTest.groupchat(room, body)  send a message to a room; returns its id
 *   xmppTest.disconnect()     close the session
 */
(function () {
    'use strict';

    const state = {
        status: 'LOADING',
        statuses: [],
        connected: false,
        jid: null,
        transport: null,
        messages: [],
        presences: [],
        sent: [],
        errors: [],
        traffic: [],
        send: null,
        disconnect: null,
    };
    window.xmppTest = state;

    function log(text) {
        const li = document.createElement('li');
        li.textContent = text;
        document.getElementById('log').appendChild(li);
    }

    window.addEventListener('error', function (event) {
        state.errors.push('script error: ' + event.message);
        log('script error: ' + event.message);
    });

    const params = new URLSearchParams(window.location.search);
    const service = params.get('service');
    const jid = params.get('jid');
    const password = params.get('password');
    const to = params.get('to');
    const body = params.get('body') || 'hello from the browser';

    if (typeof Strophe === 'undefined' || !Strophe.Connection) {
        state.status = 'NO-STROPHE';
        state.errors.push('Strophe.js did not load');
        document.getElementById('status').textContent = state.status;
        return;
    }
    if (!service || !jid || !password) {
        state.status = 'BAD-PARAMETERS';
        state.errors.push('service, jid and password are required in the query string');
        document.getElementById('status').textContent = state.status;
        return;
    }

    state.transport = /^wss?:/.test(service) ? 'websocket' : 'bosh';
    document.getElementById('transport').textContent = state.transport;
    document.getElementById('service').textContent = service;
    document.getElementById('jid').textContent = jid;

    const statusNames = {};
    Object.keys(Strophe.Status).forEach(function (name) {
        statusNames[Strophe.Status[name]] = name;
    });

    const connection = new Strophe.Connection(service);
    state.connection = connection;
    connection.xmlInput = function (elem) {
        state.traffic.push('IN ' + Strophe.serialize(elem));
    };
    connection.xmlOutput = function (elem) {
        state.traffic.push('OUT ' + Strophe.serialize(elem));
    };

    function text(elem, tag) {
        const child = elem.getElementsByTagName(tag)[0];
        return child ? child.textContent : null;
    }

    function onMessage(stanza) {
        const message = {
            from: stanza.getAttribute('from'),
            type: stanza.getAttribute('type') || 'normal',
            body: text(stanza, 'body'),
            xml: Strophe.serialize(stanza),
        };
        state.messages.push(message);
        if (message.type === 'error') {
            state.errors.push('error message: ' + message.xml);
        }
        if (message.body !== null) {
            const li = document.createElement('li');
            li.textContent = message.from + ': ' + message.body;
            document.getElementById('messages').appendChild(li);
        }
        return true; // keep the handler
    }

    function onPresence(stanza) {
        state.presences.push({
            from: stanza.getAttribute('from'),
            type: stanza.getAttribute('type') || 'available',
            xml: Strophe.serialize(stanza),
        });
        return true;
    }

    function send(recipient, text) {
        const id = connection.getUniqueId('msg');
        connection.send($msg({ to: recipient, type: 'chat', id: id }).c('body').t(text));
        state.sent.push(id);
        log('sent to ' + recipient + ': ' + text);
        return id;
    }

    state.send = send;
    state.join = function (room, nick) {
        connection.send($pres({ to: room + '/' + nick }).c('x', { xmlns: 'http://jabber.org/protocol/muc' }));
        log('entering ' + room + ' as ' + nick);
    };
    state.groupchat = function (room, text) {
        const id = connection.getUniqueId('muc');
        connection.send($msg({ to: room, type: 'groupchat', id: id }).c('body').t(text));
        state.sent.push(id);
        log('sent to ' + room + ': ' + text);
        return id;
    };
    state.disconnect = function () {
        connection.disconnect('test done');
    };

    function onStatus(status, condition) {
        const name = statusNames[status] || String(status);
        state.status = name;
        state.statuses.push(condition ? name + ':' + condition : name);
        document.getElementById('status').textContent = name + (condition ? ' (' + condition + ')' : '');
        log('status ' + name + (condition ? ' ' + condition : ''));
        if (status === Strophe.Status.CONNECTED) {
            state.jid = connection.jid;
            document.getElementById('jid').textContent = connection.jid;
            connection.addHandler(onMessage, null, 'message');
            connection.addHandler(onPresence, null, 'presence');
            connection.send($pres());
            state.connected = true;
            if (to) {
                send(to, body);
            }
        } else if (
            status === Strophe.Status.DISCONNECTED ||
            status === Strophe.Status.CONNFAIL ||
            status === Strophe.Status.AUTHFAIL ||
            status === Strophe.Status.ERROR
        ) {
            state.connected = false;
            if (status !== Strophe.Status.DISCONNECTED) {
                state.errors.push(name + (condition ? ': ' + condition : ''));
            }
        }
    }

    try {
        connection.connect(jid, password, onStatus);
    } catch (e) {
        state.status = 'EXCEPTION';
        state.errors.push('connect() threw: ' + e);
        document.getElementById('status').textContent = state.status;
    }
})();
