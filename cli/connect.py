"""How client commands reach the broker: shared options, trust, authentication, error mapping.

A command builds ClientOptions from `@client_options`, and inside `run_async` opens
`session_client(...)`: connected, trusted, and logged in from MAILNET_USER/MAILNET_PASSWORD or
the saved session. Client-library errors become CliErrors with the documented exit codes.
"""

from __future__ import annotations

import functools
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click
import trio

from broker import tls
from broker.client import (
    BrokerUnreachable,
    Client,
    ClientError,
    RequestFailed,
    Trust,
    TrustError,
    connect,
)

from .inputs import parse_server_address
from .output import (
    EXIT_AUTH,
    EXIT_REFUSED,
    EXIT_UNEXPECTED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CliError,
    fail,
    innermost,
    note,
)
from .session_file import SavedSession, SessionFileError, known_servers_path, load_session

DEFAULT_SERVER = "127.0.0.1:7878"
NOT_LOGGED_IN = "not logged in: run `mailnet login`"

AUTH_CODES = {"auth_failed", "not_authenticated", "account_disabled"}
USAGE_CODES = {"bad_request"}
UNREACHABLE_CODES = {"unavailable", "timeout", "too_many_connections"}

T = TypeVar("T")


@dataclass(frozen=True)
class ClientOptions:
    server: str | None  # from --server or MAILNET_SERVER; None means "saved, else default"
    ca_file: Path | None
    insecure_plaintext: bool

    def trust(self) -> Trust:
        if self.insecure_plaintext:
            return Trust.plaintext()
        if self.ca_file is not None:
            return Trust.certificate_authority(self.ca_file)
        return Trust.pinning(known_servers_path())


def normalize_server(server: str) -> str:
    """The canonical HOST:PORT of a server address; exit 2 if it is not one (cli.inputs)."""
    return tls.format_server_address(*parse_server_address(server))


def client_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add --server and the trust options; the command receives them as `options`."""

    @click.option(
        "--server",
        envvar="MAILNET_SERVER",
        metavar="HOST:PORT",
        help="Broker address [env MAILNET_SERVER; default: the saved session's, else "
        f"{DEFAULT_SERVER}]",
    )
    @click.option(
        "--ca-file",
        type=click.Path(dir_okay=False, path_type=Path),
        envvar="MAILNET_CA_FILE",
        help="Verify the broker's certificate against this CA instead of pinning it.",
    )
    @click.option(
        "--insecure-plaintext",
        is_flag=True,
        envvar="MAILNET_INSECURE_PLAINTEXT",
        help="Talk to a plaintext broker (no TLS) [env MAILNET_INSECURE_PLAINTEXT=1].",
    )
    @functools.wraps(command)
    def wrapper(
        *args: Any, server: str | None, ca_file: Path | None, insecure_plaintext: bool, **kw: Any
    ) -> Any:
        options = ClientOptions(
            server=normalize_server(server) if server else None,
            ca_file=ca_file,
            insecure_plaintext=insecure_plaintext,
        )
        return command(*args, options=options, **kw)

    return wrapper


# -- running and error mapping -------------------------------------------------------------------


def cli_error_for(exc: BaseException) -> CliError | None:
    """The CliError that a client-library failure means to the user, or None if unknown."""
    if isinstance(exc, CliError):
        return exc
    if isinstance(exc, RequestFailed):
        if exc.code in AUTH_CODES:
            code = EXIT_AUTH
        elif exc.code in USAGE_CODES:
            code = EXIT_USAGE
        elif exc.code in UNREACHABLE_CODES:
            code = EXIT_UNREACHABLE
        else:
            code = EXIT_REFUSED
        return CliError(exc.message or exc.code, code)
    if isinstance(exc, TrustError | BrokerUnreachable | tls.TLSError):
        return CliError(str(exc), EXIT_UNREACHABLE)
    if isinstance(exc, SessionFileError):
        return CliError(str(exc), EXIT_AUTH)
    if isinstance(exc, ClientError):
        return CliError(str(exc), EXIT_UNEXPECTED)
    return None


def run_async(function: Callable[..., Awaitable[T]], *args: Any) -> T:
    """trio.run, with client errors turned into CliErrors (unwrapped from nursery groups)."""
    try:
        return trio.run(function, *args)
    except BaseException as raw:
        exc = innermost(raw)
        mapped = cli_error_for(exc)
        if mapped is not None:
            raise mapped from None
        if exc is not raw:
            raise exc from None
        raise


# -- connecting and authenticating -----------------------------------------------------------


@asynccontextmanager
async def open_client(options: ClientOptions, server: str) -> AsyncIterator[Client]:
    """A connected client; says so on stderr when the broker's certificate is pinned now."""
    client: Client | None = None
    try:
        async with connect(server, trust=options.trust()) as client:
            if client.pin is not None and client.pin.newly_pinned:
                note(
                    f"mailnet: pinned the certificate of {client.pin.server}: "
                    f"{client.pin.fingerprint} (saved in {known_servers_path()})"
                )
            yield client
    except BaseException as raw:
        exc = innermost(raw)
        # Dropped before logging in, by a reachable broker: most often TLS on one side only.
        if (
            isinstance(exc, BrokerUnreachable)
            and (client is None or client.username is None)
            and not str(exc).startswith("cannot reach")
        ):
            raise BrokerUnreachable(f"{exc} {_tls_hint(options)}") from None
        raise


def _tls_hint(options: ClientOptions) -> str:
    if options.insecure_plaintext:
        return (
            "(if the broker uses TLS, leave out --insecure-plaintext / MAILNET_INSECURE_PLAINTEXT)"
        )
    return "(if the broker runs with --insecure-plaintext, connect with --insecure-plaintext too)"


def env_credentials() -> tuple[str, str] | None:
    user, password = os.environ.get("MAILNET_USER"), os.environ.get("MAILNET_PASSWORD")
    return (user, password) if user and password else None


def saved_session_for(options: ClientOptions) -> SavedSession:
    saved = load_session()
    if saved is None:
        fail(NOT_LOGGED_IN, EXIT_AUTH)
    if options.server is not None and options.server != normalize_server(saved.server):
        fail(
            f"not logged in to {options.server} (the saved session is for {saved.server}): "
            "run `mailnet login`",
            EXIT_AUTH,
        )
    return saved


@dataclass
class Authenticated:
    client: Client
    server: str
    saved: SavedSession | None  # the saved session used, if any (None: env credentials)
    resume_after: int = 0  # the broker feeds this live session the mail after this seq


@asynccontextmanager
async def session_client(
    options: ClientOptions, *, live: bool = False, resume_after: int | None = None
) -> AsyncIterator[Authenticated]:
    """Connect and log in from MAILNET_USER/MAILNET_PASSWORD or the saved session token.

    A `live` client (listen, shell) gets the mail queued after what this computer has shown
    (the saved last_seq; with env credentials, after what the user acknowledged last), or
    after `resume_after` when given (a reconnection: after what this process has shown).
    """
    # A one-shot command logs in quietly: it is not shown online, the broker pushes it nothing
    # and it acknowledges nothing, so mail stays queued for `listen` and `shell`.
    credentials = env_credentials()
    if credentials is not None:
        server = options.server or DEFAULT_SERVER
        async with open_client(options, server) as client:
            response = await client.login(
                *credentials, create=False, live=live, resume_after=resume_after
            )
            yield Authenticated(client, server, None, response["resume_after"])
            if not client.closed:  # these credentials make a new token each time: revoke it
                with trio.move_on_after(5):
                    await client.logout()
        return
    saved = saved_session_for(options)
    server = normalize_server(saved.server)
    async with open_client(options, server) as client:
        try:
            if live and resume_after is None:
                resume_after = saved.last_seq
            response = await client.resume(saved.token, resume_after=resume_after, live=live)
        except RequestFailed as exc:
            if exc.code == "auth_failed":
                fail(
                    f"the saved session for {saved.username} has expired or was logged out: "
                    "run `mailnet login`",
                    EXIT_AUTH,
                )
            raise
        yield Authenticated(client, server, saved, response["resume_after"])


@asynccontextmanager
async def stop_on_signals() -> AsyncIterator[None]:
    """Run the body until SIGINT or SIGTERM, then cancel it quietly (a normal stop, exit 0)."""
    with (
        trio.CancelScope() as scope,
        trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals,
    ):
        async with trio.open_nursery() as nursery:

            async def wait_for_signal() -> None:
                async for _ in signals:
                    scope.cancel()
                    return

            nursery.start_soon(wait_for_signal)
            yield
            nursery.cancel_scope.cancel()
