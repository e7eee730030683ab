"""``/viewer/``: OHIF (``atrium.viewer.site``), and ``/api/dev-login/…``: the dev
issuer's OpenID Connect sign-in that OHIF uses when no ``ATRIUM_OIDC_ISSUER`` is
configured (``atrium.auth.dev_issuer.DevLogin``; docs/VIEWER.md).

The viewer's files are public (the request filter lets ``GET /viewer/…`` through
without a token); its data comes from ``/dicom-web/`` and ``/api/`` with the user's
token. The dev sign-in exists only without a real issuer (its routes are then not
declared, so they are the router's 404) and answers loopback clients only.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlencode, urlsplit

from atrium.api.http import (
    PUBLIC,
    Reply,
    Request,
    Response,
    Route,
    json_response,
    problem_response,
)
from atrium.api.schema import obj, string
from atrium.auth.client_address import is_loopback
from atrium.auth.dev_issuer import (
    DEV_ISSUER,
    DevIssuer,
    DevLogin,
    LoginError,
    check_redirect,
    load_or_create,
)
from atrium.auth.principal import KNOWN_ROLES
from atrium.errors import ApiError, BadRequest, Forbidden, MethodNotAllowed
from atrium.settings import PUBLIC_DICOMWEB_ROOT
from atrium.viewer.config import DEV_LOGIN_PATH, app_config, app_config_script
from atrium.viewer.install import target_dir
from atrium.viewer.site import OhifSite

if TYPE_CHECKING:
    from atrium.app import Atrium
    from atrium.settings import Settings

__all__ = ["dev_login_routes", "ohif_site", "routes", "serve"]

FORM = "application/x-www-form-urlencoded"
SESSION_COOKIE = "atrium_dev_login"
_TEXT = string(max_length=2048)
# What an OpenID Connect client may add to an authorization request (OIDC Core
# §3.1.2.1, RFC 7636): accepted, and those the dev sign-in does not use ignored.
_AUTHORIZE_QUERY = obj({name: _TEXT for name in (
    "response_type", "client_id", "redirect_uri", "scope", "state", "nonce",
    "code_challenge", "code_challenge_method", "response_mode", "prompt", "login_hint",
    "max_age", "ui_locales", "acr_values", "display", "id_token_hint", "claims", "resource")})
_LOGOUT_QUERY = obj({name: _TEXT for name in (
    "id_token_hint", "post_logout_redirect_uri", "state", "client_id", "logout_hint",
    "ui_locales")})
_FORM_FIELDS = ("client_id", "redirect_uri", "state", "nonce", "code_challenge",
                "code_challenge_method")
_PAGE_POLICY = ("default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; "
                "frame-ancestors 'none'; form-action 'self'")


def ohif_site(settings: Settings) -> OhifSite:
    """OHIF as configured by ``settings``: the build in ``ATRIUM_VIEWER_DIR``, or the
    one ``scripts/bootstrap.sh`` installs in the checkout's ``build/viewer/``."""
    from atrium.devenv import REPO_ROOT

    root = settings.viewer_dir or target_dir(REPO_ROOT / "build" / "viewer")
    config = app_config(issuer=settings.oidc_issuer, client_id=settings.oidc_audience,
                        dicomweb_root=PUBLIC_DICOMWEB_ROOT)
    issuer = settings.oidc_issuer
    connect = (f"{urlsplit(issuer).scheme}://{urlsplit(issuer).netloc}",) if issuer else ()
    return OhifSite.load(root, app_config_script(config), connect)


def serve(site: OhifSite, request: Request) -> Response:
    """``GET /viewer/<path>``; ``request.path`` is what follows ``/viewer/``."""
    try:
        if request.method != "GET":
            raise MethodNotAllowed("The viewer's files are read with GET", ["GET"])
        return site.handle(request.path, request.headers)
    except ApiError as error:
        return problem_response(error)


def _form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body; a repeated name keeps its last."""
    text = request.body.decode("utf-8", "replace")
    return {key: items[-1] for key, items in parse_qs(text, keep_blank_values=True).items()}


def _loopback_only(request: Request) -> None:
    if not is_loopback(request.client_ip or ""):
        raise Forbidden("The dev sign-in answers this machine only (loopback); configure "
                        "ATRIUM_OIDC_ISSUER to sign in from elsewhere")


def _login_page(fields: Mapping[str, str], error: str = "") -> Response:
    hidden = "".join(f'<input type="hidden" name="{name}" value="{html.escape(value)}">'
                     for name, value in fields.items())
    roles = "".join(f'<option{" selected" if role == "clinician" else ""}>{role}</option>'
                    for role in sorted(KNOWN_ROLES))
    message = f'<p role="alert" id="error">{html.escape(error)}</p>' if error else ""
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Atrium dev sign-in</title>
<style>body{{font:16px sans-serif;max-width:26em;margin:4em auto}}label{{display:block;
margin:.8em 0}}input,select{{display:block;width:100%;font:inherit}}</style></head>
<body><h1>Atrium dev sign-in</h1>
<p>The local dev issuer: no password, for this machine only.</p>{message}
<form method="post" action="{DEV_LOGIN_PATH}/authorize">{hidden}
<label>User <input name="username" id="username" required value="dev"></label>
<label>Organization <input name="organization" id="organization" required
 value="Default"></label>
<label>Role <select name="role" id="role">{roles}</select></label>
<button type="submit" id="sign-in">Sign in</button></form></body></html>"""
    return Response(400 if error else 200, page.encode(), "text/html; charset=utf-8",
                    {"Content-Security-Policy": _PAGE_POLICY, "Cache-Control": "no-store",
                     "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"})


def _cookie(request: Request) -> str:
    for part in request.headers.get("cookie", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == SESSION_COOKIE:
            return value
    return ""


def _redirect(target: str, headers: Mapping[str, str] | None = None) -> Response:
    link = html.escape(target)
    body = (f'<!doctype html><title>Redirecting</title><meta http-equiv="refresh" '
            f'content="0;url={link}"><a href="{link}">Continue</a>')
    return Response(303, body.encode(), "text/html; charset=utf-8",
                    {"Location": target, "Cache-Control": "no-store", **(headers or {})})


def _with_code(redirect_uri: str, code: str, state: str) -> str:
    query = urlencode({"code": code, "state": state})
    return redirect_uri + ("&" if urlsplit(redirect_uri).query else "?") + query


def _token_error(error: LoginError) -> Response:
    # RFC 6749 §5.2: what an OAuth client reads, not a problem document.
    return json_response({"error": error.error, "error_description": str(error)}, 400,
                         {"Cache-Control": "no-store"})


def dev_login_routes(issuer: DevIssuer, login: DevLogin) -> list[Route]:
    """The dev issuer's discovery, sign-in form, token and key routes."""

    def base(request: Request) -> str:
        host = request.headers.get("host", "127.0.0.1")
        return f"http://{host}{DEV_LOGIN_PATH}"

    def discovery(request: Request) -> Response:
        _loopback_only(request)
        root = base(request)
        return json_response({
            "issuer": DEV_ISSUER, "authorization_endpoint": f"{root}/authorize",
            "token_endpoint": f"{root}/token", "jwks_uri": f"{root}/jwks",
            "end_session_endpoint": f"{root}/logout",
            "response_types_supported": ["code"], "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "code_challenge_methods_supported": ["S256"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid"],
            "token_endpoint_auth_methods_supported": ["none"]})

    def keys(request: Request) -> Response:
        return json_response(issuer.jwks())

    def ask(request: Request) -> Response:
        _loopback_only(request)
        args = request.args
        if args.get("response_type") != "code":
            raise BadRequest("The dev sign-in supports response_type=code only")
        fields = {name: str(args.get(name) or "") for name in _FORM_FIELDS}
        try:
            check_redirect(fields["redirect_uri"])
        except LoginError as error:
            raise BadRequest(str(error)) from None
        signed_in = login.session(_cookie(request))
        if signed_in is None or args.get("prompt") == "login":
            return _login_page(fields)
        user, organization, role = signed_in
        return _sign_in(fields, user, organization, role, new_session=False)

    def _sign_in(fields: Mapping[str, str], user: str, organization: str, role: str, *,
                 new_session: bool) -> Response:
        try:
            code = login.authorize(
                username=user, organization=organization, role=role,
                client_id=fields["client_id"], redirect_uri=fields["redirect_uri"],
                code_challenge=fields["code_challenge"],
                code_challenge_method=fields["code_challenge_method"],
                nonce=fields["nonce"] or None)
        except LoginError as error:
            return _login_page(fields, str(error))
        headers = {}
        if new_session:
            token = login.start_session(user, organization, role)
            headers["Set-Cookie"] = (f"{SESSION_COOKIE}={token}; Path={DEV_LOGIN_PATH}; "
                                     "HttpOnly; SameSite=Lax; Max-Age=43200")
        return _redirect(_with_code(fields["redirect_uri"], code, fields["state"]), headers)

    def answer(request: Request) -> Response:
        _loopback_only(request)
        form = _form(request)
        fields = {name: form.get(name, "") for name in _FORM_FIELDS}
        return _sign_in(fields, form.get("username", ""), form.get("organization", ""),
                        form.get("role", ""), new_session=True)

    def sign_out(request: Request) -> Response:
        _loopback_only(request)
        login.end_session(_cookie(request))
        clear = {"Set-Cookie": f"{SESSION_COOKIE}=; Path={DEV_LOGIN_PATH}; HttpOnly; "
                               "SameSite=Lax; Max-Age=0"}
        target = str(request.args.get("post_logout_redirect_uri") or "")
        try:
            check_redirect(target)
        except LoginError:
            page = b"<!doctype html><title>Signed out</title><p>Signed out.</p>"
            return Response(200, page, "text/html; charset=utf-8",
                            {"Cache-Control": "no-store", **clear})
        state = request.args.get("state")
        if state:
            target += ("&" if urlsplit(target).query else "?") + urlencode({"state": state})
        return _redirect(target, clear)

    def token(request: Request) -> Response:
        _loopback_only(request)
        form = _form(request)
        grant = form.get("grant_type")
        try:
            if grant == "authorization_code":
                tokens = login.redeem(code=form.get("code", ""),
                                      code_verifier=form.get("code_verifier", ""),
                                      client_id=form.get("client_id", ""),
                                      redirect_uri=form.get("redirect_uri", ""))
            elif grant == "refresh_token":
                tokens = login.refresh(refresh_token=form.get("refresh_token", ""),
                                       client_id=form.get("client_id", ""))
            else:
                raise LoginError("unsupported_grant_type",
                                 "authorization_code or refresh_token")
        except LoginError as error:
            return _token_error(error)
        return json_response(tokens, headers={"Cache-Control": "no-store",
                                              "Pragma": "no-cache"})

    tags = ("dev sign-in",)
    html_reply = {200: Reply("The page", {"type": "string"}, "text/html")}
    return [
        Route("GET", f"{DEV_LOGIN_PATH}/.well-known/openid-configuration", discovery,
              tags=tags, auth=PUBLIC, summary="The dev issuer's OpenID Connect discovery",
              responses={200: Reply("Discovery document")}),
        Route("GET", f"{DEV_LOGIN_PATH}/jwks", keys, tags=tags, auth=PUBLIC,
              summary="The dev issuer's public key", responses={200: Reply("JWKS")}),
        Route("GET", f"{DEV_LOGIN_PATH}/authorize", ask, tags=tags, auth=PUBLIC,
              query=_AUTHORIZE_QUERY, summary="The dev sign-in form (authorization "
              "code with PKCE; loopback clients only)", responses=html_reply),
        Route("POST", f"{DEV_LOGIN_PATH}/authorize", answer, tags=tags, auth=PUBLIC,
              media_types=(FORM,), max_body_bytes=16384,
              summary="Sign in: redirects to the client with a code",
              responses={303: Reply("To the client's redirect address, with the code"),
                         **html_reply}),
        Route("GET", f"{DEV_LOGIN_PATH}/logout", sign_out, tags=tags, auth=PUBLIC,
              query=_LOGOUT_QUERY, summary="End the dev sign-in's browser session",
              responses={303: Reply("To the client's address after sign-out"),
                         **html_reply}),
        Route("POST", f"{DEV_LOGIN_PATH}/token", token, tags=tags, auth=PUBLIC,
              media_types=(FORM,), max_body_bytes=16384,
              summary="Tokens for a code (with its PKCE verifier) or a refresh token",
              responses={200: Reply("Access, ID and refresh tokens")}),
    ]


def routes(app: Atrium) -> list[Route]:
    """The dev sign-in's routes, when Atrium trusts its dev issuer; else none."""
    settings = app.settings
    if settings.oidc_issuer:
        return []
    issuer = load_or_create(settings.data_dir)
    return dev_login_routes(issuer, DevLogin(issuer, audience=settings.oidc_audience,
                                             org_claim=settings.org_claim))


