/*
 * Sign-in for Atrium's pages: a token from the address, or OpenID Connect's
 * authorization code flow with PKCE (S256) as a public client — no secret in the
 * page. Loaded before the page's own script; it defines window.AtriumSignIn:
 *
 *   readAddress()              {token} from #token=…, {answer} from the provider
 *                              (code or error, in the fragment or the query), or
 *                              {}; either is removed from the address bar at once
 *   start(config, redirectUri) to the provider's login page (does not return)
 *   finish(config, answer)     the answer's code exchanged for an access token
 *
 * config is {issuer, client_id}. Errors are SignInError: {title, message, signIn}
 * (signIn: whether signing in again may help). The token is never stored: it lives
 * in the page's memory, and the provider's own session makes a new sign-in quick.
 */
window.AtriumSignIn = (function () {
  "use strict";

  const PENDING_KEY = "atrium.sign-in"; // sessionStorage: the one sign-in under way

  class SignInError extends Error {
    constructor(title, detail, signIn) {
      super(detail);
      this.title = title;
      this.signIn = signIn !== false;
    }
  }

  function base64url(bytes) {
    let text = "";
    for (const byte of new Uint8Array(bytes)) {
      text += String.fromCharCode(byte);
    }
    return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function randomString(byteCount) {
    return base64url(crypto.getRandomValues(new Uint8Array(byteCount)));
  }

  function readAddress() {
    const fragment = new URLSearchParams(location.hash.replace(/^#/, ""));
    const query = new URLSearchParams(location.search);
    const isAnswer = (params) => params.has("code") || params.has("error");
    if (fragment.has("token") || isAnswer(fragment) || isAnswer(query)) {
      history.replaceState(null, "", location.pathname);
    }
    if (fragment.get("token")) {
      return {token: fragment.get("token")};
    }
    if (isAnswer(fragment)) {
      return {answer: fragment};
    }
    return isAnswer(query) ? {answer: query} : {};
  }

  async function discover(config) {
    const issuer = config.issuer.replace(/\/+$/, "");
    let response;
    try {
      response = await fetch(issuer + "/.well-known/openid-configuration",
        {credentials: "omit"});
    } catch (error) {
      throw new SignInError("The sign-in service cannot be reached",
        issuer + " did not answer (" + error.message + ").");
    }
    if (!response.ok) {
      throw new SignInError("The sign-in service cannot be reached",
        issuer + " answered HTTP " + response.status + " for its configuration.");
    }
    const meta = await response.json();
    if (String(meta.issuer || "").replace(/\/+$/, "") !== issuer) {
      throw new SignInError("Sign-in is misconfigured",
        "The configuration at " + issuer + " names another issuer, " + meta.issuer + ".",
        false);
    }
    return meta;
  }

  async function start(config, redirectUri) {
    if (!window.crypto || !crypto.subtle) {
      throw new SignInError("Sign-in needs a secure page",
        "Browsers sign in only from https:// pages (or localhost). Open this page over " +
        "HTTPS, or with #token=<token>.", false);
    }
    const meta = await discover(config);
    const verifier = randomString(32);
    const state = randomString(16);
    const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier));
    sessionStorage.setItem(PENDING_KEY,
      JSON.stringify({state: state, verifier: verifier, redirect: redirectUri}));
    const target = new URL(meta.authorization_endpoint);
    const params = {
      response_type: "code", client_id: config.client_id, redirect_uri: redirectUri,
      scope: "openid", state: state, code_challenge: base64url(digest),
      code_challenge_method: "S256",
    };
    // A code in the fragment never reaches a server, nor its access log.
    const modes = meta.response_modes_supported;
    if (Array.isArray(modes) && modes.includes("fragment")) {
      params.response_mode = "fragment";
    }
    for (const [name, value] of Object.entries(params)) {
      target.searchParams.set(name, value);
    }
    location.assign(target.toString());
  }

  async function finish(config, answer) {
    const pending = JSON.parse(sessionStorage.getItem(PENDING_KEY) || "null");
    sessionStorage.removeItem(PENDING_KEY);
    if (answer.has("error")) {
      throw new SignInError("Sign-in failed",
        answer.get("error_description") || answer.get("error"));
    }
    if (!pending || pending.state !== answer.get("state")) {
      throw new SignInError("Sign-in failed",
        "The sign-in answer does not belong to a sign-in this page started; sign in again.");
    }
    const meta = await discover(config);
    const response = await fetch(meta.token_endpoint, {
      method: "POST",
      credentials: "omit",
      headers: {"Content-Type": "application/x-www-form-urlencoded"},
      body: new URLSearchParams({
        grant_type: "authorization_code", code: answer.get("code"),
        redirect_uri: pending.redirect, client_id: config.client_id,
        code_verifier: pending.verifier,
      }),
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok || typeof body.access_token !== "string") {
      const reason = body.error_description || body.error;
      throw new SignInError("Sign-in failed", "The sign-in service refused the code" +
        (reason ? ": " + reason : "."));
    }
    return body.access_token;
  }

  return {SignInError: SignInError, readAddress: readAddress, start: start, finish: finish};
})();
