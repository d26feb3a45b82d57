"""A nats-server configuration with one user per natsflow role, and its credentials.

``natsflow nats-config`` writes what this module makes: the server's configuration
(JetStream, and an ``authorization`` block whose users carry the permissions of
:mod:`contracts.permissions`), and for each user an env file that a service reads with
the usual settings (:class:`transport.connect.NatsSettings`): ``NATS_USER`` and
``NATS_PASSWORD``, or ``NATS_NKEY`` naming a seed file, with ``NATS_INBOX_PREFIX``.
Passwords are random and stored in the server's configuration only as bcrypt hashes;
with nkeys the server holds public keys only.
"""

from __future__ import annotations

import json
import secrets
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Final

import bcrypt
import nkeys

from contracts.permissions import Permissions, Role, nsc_command, permissions_for
from contracts.subjects import Subjects
from transport.connect import NatsSettings

__all__ = ["DEFAULT_USERS", "Auth", "Credential", "User", "authorization_block",
           "env_file", "make_credentials", "nsc_commands", "parse_user", "server_config",
           "user_settings", "write_config"]


class Auth(StrEnum):
    """How users prove who they are."""

    PASSWORD = "password"
    NKEYS = "nkeys"


@dataclass(frozen=True, slots=True)
class User:
    """One user to create: a role, a name and, for a worker, its task types."""

    role: Role
    name: str
    task_types: tuple[str, ...] = ()

    def permissions(self, subjects: Subjects, *, egress: Sequence[str] = ()) -> Permissions:
        """This user's permissions in the deployment."""
        return permissions_for(self.role, subjects, user=self.name,
                               task_types=self.task_types,
                               egress=egress if self.role is Role.ORCHESTRATOR else ())


#: The users written when none are named: one per role, the worker serving ``demo.*``.
DEFAULT_USERS: Final = (
    User(Role.ORCHESTRATOR, "orchestrator"), User(Role.INDEX, "index"),
    User(Role.GATEWAY, "gateway"),
    User(Role.WORKER, "worker", ("demo.echo", "demo.noop", "demo.add", "demo.sleep",
                                 "demo.flaky", "demo.fail", "demo.count")),
    User(Role.SUBMITTER, "submitter"), User(Role.WATCHER, "watcher"),
)


def parse_user(spec: str) -> User:
    """A user from ``ROLE[:NAME][=TASK,TASK...]``, e.g. ``worker:mailer=email.send``.

    Raises:
        ValueError: an unknown role, or task types for a role that is not a worker.
    """
    head, _, tasks = spec.partition("=")
    role_name, _, name = head.partition(":")
    try:
        role = Role(role_name)
    except ValueError:
        roles = ", ".join(r.value for r in Role)
        raise ValueError(f"unknown role {role_name!r} in {spec!r}: one of {roles}") from None
    task_types = tuple(t.strip() for t in tasks.split(",") if t.strip())
    if task_types and role is not Role.WORKER:
        raise ValueError(f"only a worker serves task types ({spec!r})")
    if role is Role.WORKER and not task_types:
        raise ValueError(f"a worker needs its task types: worker:NAME=TASK,... ({spec!r})")
    return User(role, name or role.value, task_types)


@dataclass(frozen=True, slots=True)
class Credential:
    """What one user connects with, and what the server checks it against.

    Attributes:
        user: The user.
        secret: The password, or the nkey seed (``SU...``); never in the server config.
        check: What the server config holds: the bcrypt hash, or the public nkey.
    """

    user: User
    auth: Auth
    secret: str
    check: str


def make_credentials(users: Iterable[User], auth: Auth, *,
                     bcrypt_rounds: int = 11) -> list[Credential]:
    """Fresh random credentials for ``users``.

    Raises:
        ValueError: two users have the same name.
    """
    out: list[Credential] = []
    seen: set[str] = set()
    for user in users:
        if user.name in seen:
            raise ValueError(f"two users are named {user.name!r}")
        seen.add(user.name)
        if auth is Auth.NKEYS:
            seed = nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER)
            pair = nkeys.from_seed(seed)
            out.append(Credential(user, auth, seed.decode(), pair.public_key.decode()))
        else:
            password = secrets.token_urlsafe(24)
            hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(bcrypt_rounds))
            out.append(Credential(user, auth, password, hashed.decode()))
    return out


def _q(value: str) -> str:
    # A JSON string is a valid quoted string of nats-server's config (no $-variables).
    return json.dumps(value)


def _list(values: Sequence[str], indent: str) -> str:
    if not values:
        return "[]"
    inner = f",\n{indent}  ".join(_q(v) for v in values)
    return f"[\n{indent}  {inner}\n{indent}]"


def _user_block(cred: Credential, perms: Permissions, indent: str) -> str:
    i = indent
    who = (f'nkey: {_q(cred.check)}' if cred.auth is Auth.NKEYS
           else f'user: {_q(cred.user.name)}, password: {_q(cred.check)}')
    parts = [f"{i}{{",
             f"{i}  # {perms.role.value}" + (f": {', '.join(perms.task_types)}"
                                             if perms.task_types else ""),
             f"{i}  {who}",
             f"{i}  permissions: {{",
             f"{i}    publish: {{",
             f"{i}      allow: {_list(perms.publish, i + '      ')}",
             f"{i}      deny: {_list(perms.publish_deny, i + '      ')}",
             f"{i}    }}",
             f"{i}    subscribe: {{",
             f"{i}      allow: {_list(perms.subscribe, i + '      ')}",
             f"{i}      deny: {_list(perms.subscribe_deny, i + '      ')}",
             f"{i}    }}"]
    if perms.responses:
        parts.append(f"{i}    allow_responses: true")
    parts += [f"{i}  }}", f"{i}}}"]
    return "\n".join(parts)


def authorization_block(credentials: Sequence[Credential], subjects: Subjects, *,
                        egress: Sequence[str] = ()) -> str:
    """The ``authorization { users = [...] }`` block: one user per credential."""
    users = ",\n".join(_user_block(c, c.user.permissions(subjects, egress=egress), "    ")
                       for c in credentials)
    return f"authorization {{\n  users = [\n{users}\n  ]\n}}\n"


def server_config(credentials: Sequence[Credential], subjects: Subjects, *,
                  store_dir: str | None = None, listen: str | None = None,
                  max_payload: int | None = 8 * 1024 * 1024,
                  egress: Sequence[str] = ()) -> str:
    """A whole nats-server configuration: listen address, JetStream and the users.

    Args:
        credentials: The users and what the server checks them against.
        subjects: The deployment's names.
        store_dir: Where JetStream keeps its data (None: no ``jetstream`` block, e.g.
            when the command line turns JetStream on).
        listen: ``host:port`` to listen on (None: the server's default or command line).
        max_payload: Largest message, bytes (None: the server's default).
        egress: Subjects the orchestrator's request/publish steps may reach.
    """
    lines = [f"# natsflow deployment {_q(subjects.prefix)}: written by `natsflow nats-config`.",
             "# Anonymous clients are refused: every client is one of the users below."]
    if listen is not None:
        lines.append(f"listen: {_q(listen)}")
    if max_payload is not None:
        lines.append(f"max_payload: {max_payload}")
    if store_dir is not None:
        lines += ["jetstream {", f"  store_dir: {_q(store_dir)}", "}"]
    return "\n".join(lines) + "\n" + authorization_block(credentials, subjects, egress=egress)


def env_file(cred: Credential, *, servers: Sequence[str], subjects: Subjects,
             seed_path: Path | None = None) -> str:
    """The env file a service of this user reads (``set -a; . ./orchestrator.env``)."""
    perms = cred.user.permissions(subjects)
    lines = [f"# natsflow {perms.role.value} {cred.user.name!r} of {subjects.prefix!r}",
             f"NATS_URL={','.join(servers)}", f"NATSFLOW_PREFIX={subjects.prefix}",
             f"NATS_INBOX_PREFIX={perms.inbox}"]
    if cred.auth is Auth.NKEYS:
        assert seed_path is not None, "an nkey user's seed lives in a file"
        lines.append(f"NATS_NKEY={shlex.quote(str(seed_path))}")
    else:
        lines += [f"NATS_USER={cred.user.name}", f"NATS_PASSWORD={cred.secret}"]
    return "\n".join(lines) + "\n"


def user_settings(cred: Credential, *, servers: Sequence[str], subjects: Subjects,
                  seed_path: Path | None = None) -> NatsSettings:
    """The settings a service of this user connects with (what its env file says)."""
    perms = cred.user.permissions(subjects)
    if cred.auth is Auth.NKEYS:
        return NatsSettings(servers=list(servers), prefix=subjects.prefix,
                            nkey=str(seed_path), inbox_prefix=perms.inbox)
    return NatsSettings(servers=list(servers), prefix=subjects.prefix, user=cred.user.name,
                        password=cred.secret, inbox_prefix=perms.inbox)


def nsc_commands(users: Iterable[User], subjects: Subjects, *, account: str = "natsflow",
                 egress: Sequence[str] = ()) -> list[str]:
    """``nsc add user`` commands giving each user the same permissions in a JWT setup."""
    return [nsc_command(u.permissions(subjects, egress=egress), account=account)
            for u in users]


def write_config(directory: Path, credentials: Sequence[Credential], subjects: Subjects, *,
                 servers: Sequence[str], store_dir: str | None, listen: str | None,
                 egress: Sequence[str] = ()) -> list[Path]:
    """Write ``nats-server.conf`` and one env file (and seed file) per user, private
    to their owner; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    conf = directory / "nats-server.conf"
    _write_private(conf, server_config(credentials, subjects, store_dir=store_dir,
                                       listen=listen, egress=egress))
    written.append(conf)
    for cred in credentials:
        seed_path = None
        if cred.auth is Auth.NKEYS:
            seed_path = (directory / f"{cred.user.name}.nk").resolve()
            _write_private(seed_path, cred.secret + "\n")
            written.append(seed_path)
        env = directory / f"{cred.user.name}.env"
        _write_private(env, env_file(cred, servers=servers, subjects=subjects,
                                     seed_path=seed_path))
        written.append(env)
    return written


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` readable by its owner only (it holds secrets, or their hashes)."""
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(text)
