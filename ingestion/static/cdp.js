/*! cdp.js: first-party tracking snippet. Embed:
 *   <script src="https://YOUR-CDP/sdk/cdp.js" data-write-key="wk_..." async></script>
 * Options (data- attributes or cdp.init({...})): writeKey, host (defaults to the script's
 * origin), consent ("required" to send nothing and set no cookie until cdp.consent(true)),
 * autoPage ("false" to skip the automatic page call).
 * API: cdp.track(event, properties), cdp.identify(userId, traits), cdp.page(name, properties),
 * cdp.reset(), cdp.consent(granted, choices), cdp.flush(). cdp.consent records the visitor's
 * choice on their profile as a "Consent Updated" event: choices per channel, e.g.
 * {email: "granted", whatsapp: {marketing: "denied"}}, else {web: "granted"|"denied"}. Calls made before the script loaded, as
 * window.cdp = window.cdp || []; cdp.push(["track", "Signed Up"]), are replayed in order.
 */
(function (window, document) {
  "use strict";
  var VERSION = "0.1.0";
  var COOKIE = "cdp_aid";
  var STORE = "cdp_queue";
  var USER = "cdp_uid";
  var MAX_BATCH = 20;
  var FLUSH_MS = 1000;
  var MAX_QUEUE = 500;

  var existing = window.cdp;
  if (existing && existing.loaded) return;

  var script = document.currentScript || document.querySelector("script[data-write-key]");
  var state = {
    writeKey: script && script.getAttribute("data-write-key"),
    host: script ? new URL(script.src, window.location.href).origin : window.location.origin,
    // A visitor who consented before carries our cookie; everyone else waits when asked to.
    consent: script && script.getAttribute("data-consent") === "required" && !readCookie(COOKIE)
      ? "pending" : "granted",
    autoPage: !(script && script.getAttribute("data-auto-page") === "false"),
    queue: [],
    held: [],
    sending: false,
    failures: 0,
    timer: null,
  };

  function uuid() {
    if (window.crypto && window.crypto.randomUUID) return window.crypto.randomUUID();
    return "xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx".replace(/[xy]/g, function (c) {
      var r = (Math.random() * 16) | 0;
      return (c === "x" ? r : (r & 0x3) | 0x8).toString(16);
    });
  }

  function readCookie(name) {
    var match = document.cookie.match(new RegExp("(?:^|; )" + name + "=([^;]*)"));
    return match ? decodeURIComponent(match[1]) : null;
  }

  function writeCookie(name, value, days) {
    var secure = window.location.protocol === "https:" ? "; Secure" : "";
    document.cookie = name + "=" + encodeURIComponent(value) + "; Max-Age=" + days * 86400 +
      "; Path=/; SameSite=Lax" + secure;
  }

  function storage(key, value) {
    try {
      if (value === undefined) return window.localStorage.getItem(key);
      if (value === null) window.localStorage.removeItem(key);
      else window.localStorage.setItem(key, value);
    } catch (e) { /* storage disabled: keep going in memory */ }
    return null;
  }

  // No cookie and no stored queue before consent: an id is only kept once it may be.
  function anonymousId() {
    if (!state.anonymousId) state.anonymousId = readCookie(COOKIE) || uuid();
    if (state.consent === "granted") writeCookie(COOKIE, state.anonymousId, 365);
    return state.anonymousId;
  }

  function campaign() {
    var params = new URLSearchParams(window.location.search);
    var out = {};
    ["source", "medium", "campaign", "term", "content"].forEach(function (field) {
      var value = params.get("utm_" + field);
      if (value) out[field === "campaign" ? "name" : field] = value;
    });
    return out;
  }

  function context() {
    var ctx = {
      library: { name: "cdp.js", version: VERSION },
      page: {
        url: window.location.href,
        path: window.location.pathname,
        search: window.location.search,
        referrer: document.referrer,
        title: document.title,
      },
      userAgent: navigator.userAgent,
      locale: navigator.language,
      screen: { width: window.screen.width, height: window.screen.height },
    };
    try { ctx.timezone = Intl.DateTimeFormat().resolvedOptions().timeZone; } catch (e) {}
    var utm = campaign();
    if (Object.keys(utm).length) ctx.campaign = utm;
    return ctx;
  }

  function enqueue(event) {
    event.messageId = uuid();
    event.timestamp = new Date().toISOString();
    event.anonymousId = anonymousId();
    var userId = state.userId || storage(USER);
    if (userId) event.userId = userId;
    event.context = context();
    if (state.consent === "pending") { state.held.push(event); return; }
    if (state.consent !== "granted") return;
    state.queue.push(event);
    if (state.queue.length > MAX_QUEUE) state.queue.splice(0, state.queue.length - MAX_QUEUE);
    persist();
    if (state.queue.length >= MAX_BATCH) flush();
    else schedule(FLUSH_MS);
  }

  function persist() {
    if (state.consent === "granted") storage(STORE, JSON.stringify(state.queue));
  }

  function schedule(ms) {
    if (state.timer) return;
    state.timer = window.setTimeout(function () { state.timer = null; flush(); }, ms);
  }

  function body(events) {
    return JSON.stringify({ batch: events, sentAt: new Date().toISOString(), writeKey: state.writeKey });
  }

  // text/plain keeps the request "simple": no CORS preflight, and sendBeacon accepts it.
  function flush() {
    if (state.sending || !state.queue.length || !state.writeKey) return;
    var events = state.queue.slice(0, MAX_BATCH);
    state.sending = true;
    fetch(state.host + "/v1/batch", {
      method: "POST",
      keepalive: true,
      headers: { "Content-Type": "text/plain" },
      body: body(events),
    }).then(function (response) {
      // 5xx and 429 are worth retrying; any other answer is final for these events.
      if (response.status >= 500 || response.status === 429) throw new Error("retry");
      settle(events, true);
    }).catch(function () {
      settle(events, false);
    });
  }

  function settle(events, done) {
    state.sending = false;
    if (done) {
      state.failures = 0;
      state.queue = state.queue.filter(function (e) { return events.indexOf(e) < 0; });
      persist();
      if (state.queue.length) schedule(0);
    } else {
      state.failures += 1;
      schedule(Math.min(30000, 500 * Math.pow(2, state.failures)));
    }
  }

  // When the page goes away, hand what is left to the browser; it sends even after unload.
  function beacon() {
    if (!state.queue.length || !state.writeKey || !navigator.sendBeacon) return;
    var events = state.queue.slice(0, MAX_BATCH);
    var blob = new Blob([body(events)], { type: "text/plain" });
    if (navigator.sendBeacon(state.host + "/v1/batch", blob)) settle(events, true);
  }

  var api = {
    loaded: true,
    version: VERSION,
    init: function (options) {
      options = options || {};
      if (options.writeKey) state.writeKey = options.writeKey;
      if (options.host) state.host = options.host.replace(/\/$/, "");
      if (options.consent === "required" && state.consent === "granted" && !readCookie(COOKIE)) {
        state.consent = "pending";
      }
      if (options.autoPage === false) state.autoPage = false;
    },
    track: function (event, properties) {
      enqueue({ type: "track", event: event, properties: properties || {} });
    },
    page: function (name, properties) {
      enqueue({ type: "page", name: name || document.title, properties: properties || {} });
    },
    identify: function (userId, traits) {
      if (typeof userId === "object") { traits = userId; userId = null; }
      if (userId) { state.userId = String(userId); storage(USER, state.userId); }
      enqueue({ type: "identify", traits: traits || {} });
    },
    reset: function () {
      state.userId = null;
      storage(USER, null);
      state.anonymousId = uuid();
      if (state.consent === "granted") writeCookie(COOKIE, state.anonymousId, 365);
    },
    consent: function (granted, choices) {
      var recorded = { consent: choices || { web: granted ? "granted" : "denied" } };
      if (granted) {
        state.consent = "granted";
        anonymousId();
        var held = state.held;
        state.held = [];
        held.forEach(function (e) { e.anonymousId = state.anonymousId; state.queue.push(e); });
        api.track("Consent Updated", recorded);
        schedule(0);
      } else {
        // A withdrawal is recorded on the profile (one last event), then nothing more is sent.
        if (state.consent === "granted" && readCookie(COOKIE)) {
          api.track("Consent Updated", recorded);
          beacon();
        }
        state.consent = "denied";
        state.held = [];
        state.queue = [];
        storage(STORE, null);
        storage(USER, null);
        writeCookie(COOKIE, "", -1);
      }
    },
    flush: flush,
    anonymousId: function () { return anonymousId(); },
  };

  try {
    var saved = JSON.parse(storage(STORE) || "[]");
    if (Array.isArray(saved) && state.consent === "granted") state.queue = saved;
  } catch (e) {}

  var pending = Array.isArray(existing) ? existing : [];
  window.cdp = api;
  pending.forEach(function (call) {
    if (call && api[call[0]]) api[call[0]].apply(api, call.slice(1));
  });
  if (state.autoPage) api.page();
  if (state.queue.length) schedule(0);
  window.addEventListener("pagehide", beacon);
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "hidden") beacon();
  });
})(window, document);
