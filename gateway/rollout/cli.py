"""`python -m rollout`: the operator's commands for a model's safe rollout.

Commands (``python -m rollout COMMAND --help`` for each):

- ``status [MODEL]``: stable, previous and candidate with its phase, the split, the shadow
  share, the promotion policy, the candidate's latest verification, the health of stable and
  candidate over the policy's rollback window, and the last events.
- ``verify MODEL [--version V]``: verify a version (the candidate, else stable) now on the
  serving stack and record the result; a failed candidate never gets traffic again.
- ``canary MODEL --percent P``, ``shadow MODEL --percent P``, ``promote MODEL``,
  ``rollback MODEL [--reason TEXT]``: move the record along; the gateway's workers follow
  within ``GATEWAY_ROLLOUT_REFRESH_S``.
- ``policy MODEL [KEY=VALUE ...]``: show the policy, or change settings of it.

Global options (before or after the command): ``--state-dir`` (``GATEWAY_ROLLOUT_DIR``),
``--repository`` (``GATEWAY_MODEL_REPOSITORY``, ``model_repository``), ``--triton-url``
(``GATEWAY_TRITON_URL``, ``127.0.0.1:8001``), ``--json`` (machine-readable output).

Operator rights: this CLI is the only way to change a rollout. It changes the records in the
rollout directory directly, under each model's lock, so it needs write access to that
directory (run it as the gateway's user, on the gateway's machine or volume). The gateway's
HTTP API has no rollout endpoint: an ordinary API key of the gateway cannot change anything.
Every change is recorded in the model's history with its author, ``user@host (pid N)``.

Exit codes: 0 done; 1 verification failed, or no rollout record; 2 usage error or a change
the record's state refuses (the message says why); 3 the serving stack (Triton) is
unreachable or does not serve the version.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.rollout.state import (
    Policy,
    RolloutError,
    RolloutState,
    RolloutStore,
    now_s,
    operator,
    promote,
    record_verification,
    rollback,
    set_policy,
    start_canary,
    start_shadow,
)
from gateway.triton_target import TargetError, parse_target
from model_contract.errors import ContractError
from model_contract.files import check_model_name

if TYPE_CHECKING:
    from gateway.classifier import Classifier

EXIT_OK = 0
EXIT_FAILED = 1  # verification failed, or the model has no record
EXIT_REFUSED = 2  # usage error, or a transition the record's state does not allow
EXIT_UNREACHABLE = 3  # Triton cannot be reached or does not serve the version

PROG = "python -m rollout"
STATS_DIR = "stats"  # <state dir>/stats: the workers' windowed counters (gateway/rollout/stats.py)
DEFAULT_REPOSITORY = "model_repository"
DEFAULT_TRITON_URL = "127.0.0.1:8001"
TRITON_TIMEOUT_S = 30.0  # a verification runs every golden image; one call may take long
TRITON_READY_TIMEOUT_S = 5.0
MAX_PIXELS = 40_000_000  # the gateway's default GATEWAY_MAX_PIXELS
EVENTS_SHOWN = 10
DETAIL_WIDTH = 160  # a policy event's detail is the whole policy as JSON: cut in the listing

EPILOG = """\
exit codes:
  0  done
  1  verification failed, or the model has no rollout record
  2  usage error, or a change the record's current state refuses (the message says why)
  3  the serving stack (Triton) is unreachable or does not serve the version

Changing a rollout needs write access to the rollout directory (GATEWAY_ROLLOUT_DIR); the
gateway's HTTP API cannot change one. Every change records who made it (user@host (pid)).
"""


class CommandError(Exception):
    """An expected failure: one sentence for stderr, saying what to do next, and an exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True)
class Context:
    """The resolved global options of one invocation."""

    state_dir: Path
    repository: Path
    triton_url: str
    json: bool

    @property
    def store(self) -> RolloutStore:
        """The rollout records."""
        return RolloutStore(self.state_dir)


# -- entry point ----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit code (errors are one sentence on stderr)."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as stop:  # argparse's usage errors (2) and --help (0)
        return stop.code if isinstance(stop.code, int) else EXIT_REFUSED
    try:
        context = resolve_context(args)
        handler: Callable[[argparse.Namespace, Context], int] = args.handler
        return handler(args, context)
    except CommandError as error:
        _fail(error.message)
        return error.code
    except RolloutError as error:
        _fail(str(error))
        return EXIT_REFUSED
    except ContractError as error:  # e.g. a model name that cannot be one
        _fail(f"{_clause(error)}.")
        return EXIT_REFUSED
    except PermissionError as error:
        _fail(
            f"permission denied on {error.filename or 'the rollout directory'}: changing a "
            "rollout needs write access to the rollout directory (run as the gateway's user)."
        )
        return EXIT_REFUSED
    except OSError as error:
        _fail(
            f"cannot use the rollout directory: {error.strerror or error} "
            f"({error.filename or ''}); check --state-dir."
        )
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: global options accepted before and after the command."""
    # The subcommands get the global options too, with SUPPRESS defaults: a subparser's
    # defaults would otherwise overwrite a value given before the command.
    common = argparse.ArgumentParser(add_help=False)
    _add_global_options(common, suppress=True)
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Safe rollout of model versions: status, verify, canary, shadow, promote, "
        "rollback and policy of each model's rollout record.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_global_options(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, help_text: str, handler: Callable[[argparse.Namespace, Context], int]
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            parents=[common],
            help=help_text,
            description=help_text,
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(handler=handler)
        return sub

    status = command("status", "show the rollout of one model or of every model", cmd_status)
    status.add_argument("model", nargs="?", metavar="MODEL")
    verify = command(
        "verify", "verify a version on the serving stack now and record it", cmd_verify
    )
    verify.add_argument("model", metavar="MODEL")
    verify.add_argument(
        "--version", metavar="V", help="the version to verify (default: the candidate, else stable)"
    )
    canary = command(
        "canary", "send P percent of unpinned requests to the verified candidate", cmd_canary
    )
    canary.add_argument("model", metavar="MODEL")
    canary.add_argument(
        "--percent", type=float, required=True, metavar="P", help="0 to 100; 0 pauses the canary"
    )
    shadow = command(
        "shadow", "also send P percent of requests to the candidate and compare", cmd_shadow
    )
    shadow.add_argument("model", metavar="MODEL")
    shadow.add_argument(
        "--percent", type=float, required=True, metavar="P", help="0 to 100; 0 stops shadowing"
    )
    promoted = command("promote", "make the verified candidate stable for all traffic", cmd_promote)
    promoted.add_argument("model", metavar="MODEL")
    back = command(
        "rollback", "withdraw the candidate, or go back to the previous stable", cmd_rollback
    )
    back.add_argument("model", metavar="MODEL")
    back.add_argument("--reason", default="", metavar="TEXT", help="recorded in the history")
    policy = command("policy", "show the model's policy, or change KEY=VALUE settings", cmd_policy)
    policy.add_argument("model", metavar="MODEL")
    policy.add_argument("changes", nargs="*", metavar="KEY=VALUE")
    return parser


def _add_global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """--state-dir, --repository, --triton-url, --json on `parser`."""
    missing: Any = argparse.SUPPRESS if suppress else None
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=missing,
        metavar="DIR",
        help="the rollout directory (default: $GATEWAY_ROLLOUT_DIR)",
    )
    parser.add_argument(
        "--repository",
        type=Path,
        default=missing,
        metavar="DIR",
        help=f"the model repository (default: $GATEWAY_MODEL_REPOSITORY or {DEFAULT_REPOSITORY})",
    )
    parser.add_argument(
        "--triton-url",
        default=missing,
        metavar="HOST:PORT",
        help=f"Triton's gRPC address (default: $GATEWAY_TRITON_URL or {DEFAULT_TRITON_URL})",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="machine-readable output",
    )


def resolve_context(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Context:
    """The global options with the environment's defaults; CommandError when one is unusable."""
    env = os.environ if environ is None else environ
    state_dir: Path | None = args.state_dir
    if state_dir is None and env.get("GATEWAY_ROLLOUT_DIR", "").strip():
        state_dir = Path(env["GATEWAY_ROLLOUT_DIR"].strip())
    if state_dir is None:
        raise CommandError(
            "no rollout directory: pass --state-dir DIR or set GATEWAY_ROLLOUT_DIR to the "
            "gateway's (e.g. GATEWAY_ROLLOUT_DIR=.cache/rollout for `make run`).",
            EXIT_REFUSED,
        )
    repository: Path | None = args.repository
    if repository is None:
        repository = Path(env.get("GATEWAY_MODEL_REPOSITORY", "").strip() or DEFAULT_REPOSITORY)
    url: str | None = args.triton_url
    if url is None:
        url = env.get("GATEWAY_TRITON_URL", "").strip() or DEFAULT_TRITON_URL
    try:
        parse_target(url)
    except TargetError as error:
        raise CommandError(
            f"--triton-url {url!r} must be Triton's gRPC host:port, such as {DEFAULT_TRITON_URL} "
            f"(or several: host:port,host:port or dns:///name:port): {error}.",
            EXIT_REFUSED,
        ) from None
    return Context(state_dir=state_dir, repository=repository, triton_url=url, json=args.json)


# -- commands -------------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace, context: Context) -> int:
    """Print the rollout of one model (or of every model with a record)."""
    store = context.store
    if args.model is not None:
        states = [_require_record(store, args.model)]
    else:
        models = store.models()
        if not models:
            raise CommandError(
                f"no rollout records in {context.state_dir} (the gateway's controller creates "
                "one per model when it first sees it; is --state-dir right?).",
                EXIT_FAILED,
            )
        states = [state for model in models if (state := store.read(model)) is not None]
    now = time.time()
    reports = [(state, _health(context, state)) for state in states]
    if context.json:
        documents = [
            {**state.as_dict(), "split": state.split(), "health": health}
            for state, health in reports
        ]
        _print_json(documents[0] if args.model is not None else documents)
    else:
        print("\n\n".join(_status_text(state, health, now) for state, health in reports))
    return EXIT_OK


def cmd_verify(args: argparse.Namespace, context: Context) -> int:
    """Verify a version on the serving stack now, record the result; 1 when it failed."""
    store = context.store
    model = check_model_name(args.model)
    state = _require_record(store, model)
    version = args.version or (state.candidate if state.has_candidate else state.stable)
    if version is None:
        raise CommandError(f"{model} has no version to verify; pass --version V.", EXIT_REFUSED)
    if not (version.isascii() and version.isdigit()):
        raise CommandError(f"--version {version!r} is not a version number.", EXIT_REFUSED)
    from gateway.rollout.verify import verify_version  # numpy and gRPC only where needed

    classifier = _classifier(context, model)
    _check_served(classifier, context, model, version)
    stable = state.stable if version != state.stable else None
    result = verify_version(classifier, model, version, state.policy, stable=stable)
    if not result["passed"]:
        # A failed candidate is rejected for good: never record a failure that is only
        # Triton going away during the check.
        _check_served(classifier, context, model, version)
    who = operator()
    after = store.update(
        model,
        lambda current: (
            None if current is None else record_verification(current, version, result, who, now_s())
        ),
    )
    if context.json:
        _print_json(result)
    else:
        print(_verification_text(model, version, result, after))
    return EXIT_OK if result["passed"] else EXIT_FAILED


def cmd_canary(args: argparse.Namespace, context: Context) -> int:
    """Send a share of unpinned requests to the verified candidate."""
    percent: float = args.percent
    state = _apply(context, args.model, lambda s, who, now: start_canary(s, percent, who, now))
    _report(context, state, f"canary: candidate {state.candidate} gets {percent:g} % of traffic")
    return EXIT_OK


def cmd_shadow(args: argparse.Namespace, context: Context) -> int:
    """Also send a share of requests to the candidate and compare (never answering)."""
    percent: float = args.percent
    state = _apply(context, args.model, lambda s, who, now: start_shadow(s, percent, who, now))
    _report(
        context,
        state,
        f"shadow: {state.shadow_percent:g} % of requests are also sent to the other version "
        f"and compared (candidate {state.candidate})",
    )
    return EXIT_OK


def cmd_promote(args: argparse.Namespace, context: Context) -> int:
    """Make the verified candidate stable for all traffic."""
    state = _apply(context, args.model, lambda s, who, now: promote(s, who, now))
    _report(
        context,
        state,
        f"promoted: version {state.stable} is stable; {state.previous} stays loaded for "
        f"`{PROG} rollback {state.model}`",
    )
    return EXIT_OK


def cmd_rollback(args: argparse.Namespace, context: Context) -> int:
    """Withdraw the candidate, or return to the previous stable."""
    reason: str = args.reason
    state = _apply(context, args.model, lambda s, who, now: rollback(s, who, now, reason))
    _report(context, state, f"rolled back: {state.events[-1].detail}")
    return EXIT_OK


def cmd_policy(args: argparse.Namespace, context: Context) -> int:
    """Show the model's policy, or apply KEY=VALUE changes to it."""
    changes: dict[str, str] = {}
    for pair in args.changes:
        key, equals, value = pair.partition("=")
        if not equals or not key.strip():
            raise CommandError(
                f"{pair!r} is not KEY=VALUE (e.g. promotion=canary); "
                f"`{PROG} policy {args.model}` lists the settings.",
                EXIT_REFUSED,
            )
        changes[key.strip()] = value.strip()
    if not changes:
        state = _require_record(context.store, args.model)
        _print_policy(context, state.policy, "")
        return EXIT_OK

    def change(state: RolloutState, who: str, now: float) -> RolloutState:
        policy = state.policy.with_changes(changes)
        # An unchanged policy is not worth an event in the history.
        return state if policy == state.policy else set_policy(state, policy, who, now)

    before = _require_record(context.store, args.model)
    state = _apply(context, args.model, change)
    note = "policy unchanged" if state.revision == before.revision else "policy changed"
    _print_policy(context, state.policy, note)
    return EXIT_OK


# -- helpers: the record --------------------------------------------------------------------------


def _require_record(store: RolloutStore, model: str) -> RolloutState:
    """The record of `model`; CommandError (exit 1) when it has none."""
    state = store.read(check_model_name(model))
    if state is None:
        raise CommandError(_no_record(model), EXIT_FAILED)
    return state


def _no_record(model: str) -> str:
    return (
        f"no rollout record for {model} (the gateway's controller creates it when it first "
        "sees the model); check the name and --state-dir."
    )


def _apply(
    context: Context,
    model: str,
    transition: Callable[[RolloutState, str, float], RolloutState],
) -> RolloutState:
    """Apply `transition` to the record under its lock, as this operator, and return the result."""
    store = context.store
    # Checked before taking the lock: the lock would create the directory, and a mistyped
    # --state-dir must not leave an empty rollout directory behind.
    _require_record(store, model)
    who = operator()

    def change(current: RolloutState | None) -> RolloutState:
        if current is None:  # removed since the check above
            raise CommandError(_no_record(model), EXIT_FAILED)
        return transition(current, who, now_s())

    state = store.update(model, change)
    assert state is not None  # change() never returns None
    return state


def _report(context: Context, state: RolloutState, headline: str) -> None:
    """What a transition did: the headline and the new split (or the record as JSON)."""
    if context.json:
        _print_json({**state.as_dict(), "split": state.split()})
        return
    print(f"{state.model}: {headline}")
    print(f"  split    {_split_text(state)}")
    if state.shadow_percent > 0:
        print(f"  shadow   {state.shadow_percent:g} %")


def _print_policy(context: Context, policy: Policy, note: str) -> None:
    if context.json:
        _print_json(asdict(policy))
        return
    if note:
        print(note)
    width = max(len(item.name) for item in fields(policy))
    for item in fields(policy):
        print(f"{item.name:<{width}}  {_value(getattr(policy, item.name))}")


# -- helpers: verification ------------------------------------------------------------------------


def _classifier(context: Context, model: str) -> Classifier:
    """The gateway's own classifier over Triton, uncached: every call asks Triton."""
    from gateway.classifier import Classifier
    from gateway.images import ImageLimits
    from gateway.labels import LabelStore
    from gateway.triton import TritonBackend

    return Classifier(
        TritonBackend(context.triton_url, TRITON_TIMEOUT_S, TRITON_READY_TIMEOUT_S),
        LabelStore(context.repository),
        default_model=model,
        limits=ImageLimits(max_pixels=MAX_PIXELS),
        cache_ttl_s=0.0,
    )


def _check_served(classifier: Classifier, context: Context, model: str, version: str) -> None:
    """CommandError (exit 3) when Triton is unreachable or does not serve `version`."""
    from gateway.errors import (
        GatewayError,
        ModelNotFound,
        ModelNotReady,
        UpstreamTimeout,
        UpstreamUnavailable,
    )

    try:
        classifier.model(model, version, refresh=True)
    except (UpstreamUnavailable, UpstreamTimeout) as error:
        raise CommandError(
            f"cannot reach Triton at {context.triton_url} ({_clause(error)}); is Triton running? "
            "Pass "
            "--triton-url HOST:PORT (or set GATEWAY_TRITON_URL); nothing was recorded.",
            EXIT_UNREACHABLE,
        ) from None
    except (ModelNotFound, ModelNotReady) as error:
        # Not a verdict on the version: the controller may not have loaded it yet.
        raise CommandError(
            f"Triton at {context.triton_url} does not serve {model} version {version} "
            f"({_clause(error)}); "
            f"the gateway's controller loads stable and candidate, so check `{PROG} status "
            f"{model}` and try again; nothing was recorded.",
            EXIT_UNREACHABLE,
        ) from None
    except (GatewayError, ContractError):
        # Anything else (a misconfigured model, say) is a finding: verify_version records it.
        return


def _verification_text(
    model: str, version: str, result: Mapping[str, Any], after: RolloutState | None
) -> str:
    lines = [f"{model} version {version}: verification {_verdict(result)}"]
    lines.extend(f"  {line}" for line in _figures(result))
    if after is not None and after.candidate == version and after.phase == "failed":
        lines.append(f"  candidate {version} is withdrawn: it will never get traffic")
    elif after is not None and after.candidate == version and after.phase == "verified":
        lines.append(f"  candidate {version} is verified ({after.policy.promotion} promotion)")
    return "\n".join(lines)


def _verdict(result: Mapping[str, Any]) -> str:
    verdict = "passed" if result.get("passed") else "FAILED"
    seconds = result.get("seconds")
    return f"{verdict} in {seconds:g} s" if isinstance(seconds, int | float) else verdict


def _figures(result: Mapping[str, Any]) -> list[str]:
    """The verification's figures and reasons, one line each."""
    lines: list[str] = []
    fidelity = result.get("fidelity")
    if isinstance(fidelity, Mapping):
        lines.append(
            f"fidelity: top-1 agreement {_pct(fidelity.get('top1_agreement'))} on "
            f"{fidelity.get('images')} golden images, max logit diff "
            f"{_value(fidelity.get('max_logit_diff'))} (tolerance "
            f"{_value(fidelity.get('logit_tolerance'))})"
        )
    quality = result.get("quality")
    if isinstance(quality, Mapping):
        lines.append(
            f"quality:  top-1 {_pct(quality.get('top1'))}, top-5 {_pct(quality.get('top5'))} "
            f"on {quality.get('images')} labelled images"
        )
    elif "quality" in result:
        lines.append("quality:  no golden image has a known class")
    agreement = result.get("agreement_with_stable")
    if isinstance(agreement, Mapping):
        lines.append(
            f"agreement with stable {agreement.get('stable')}: top-1 {_pct(agreement.get('top1'))}"
        )
    lines.extend(f"reason: {reason}" for reason in result.get("reasons", ()))
    return lines


# -- helpers: status ------------------------------------------------------------------------------


def _health(context: Context, state: RolloutState) -> dict[str, Any]:
    """Stable's and the candidate's health over the policy's rollback window (JSON-ready)."""
    window = state.policy.rollback_window_s
    health: dict[str, Any] = {"window_s": window, "stable": None, "candidate": None}
    try:
        from gateway.rollout.stats import read_health
    except ImportError:  # stats.py arrives separately; status still shows the record
        health["unavailable"] = "gateway/rollout/stats.py is missing from this installation"
        return health
    stats_dir = context.state_dir / STATS_DIR
    versions = {
        "stable": state.stable,
        "candidate": state.candidate if state.has_candidate else None,
    }
    for role, version in versions.items():
        if version is None:
            continue
        try:
            figures = read_health(stats_dir, state.model, version, window_s=window)
        except (OSError, ValueError) as error:
            health["unavailable"] = f"cannot read {stats_dir}: {error}"
            continue
        health[role] = {"version": version, **figures.as_dict()}
    return health


def _status_text(state: RolloutState, health: Mapping[str, Any], now: float) -> str:
    """The compact human block of one model's rollout."""
    policy = state.policy
    lines = [f"{state.model}  (revision {state.revision})"]
    previous = f"   previous {state.previous} (kept loaded)" if state.previous else ""
    lines.append(f"  stable     {state.stable or '-'}{previous}")
    since = f"since {_iso(state.phase_since)} ({_age(now - state.phase_since)} ago)"
    if state.candidate is not None and state.phase != "stable":
        lines.append(f"  candidate  {state.candidate}   {state.phase} {since}")
    else:
        lines.append(f"  candidate  none   (stable {since})")
    lines.append(f"  split      {_split_text(state)}")
    lines.append(f"  shadow     {state.shadow_percent:g} %")
    mode: str = policy.promotion
    if mode == "canary":
        mode += f" ({policy.canary_percent:g} % for {policy.canary_duration_s:g} s, then promote)"
    lines.append(f"  promotion  {mode}")
    shown = state.candidate if state.candidate is not None else state.stable
    verification = state.verifications.get(shown) if shown is not None else None
    if verification is not None:
        checked = verification.get("checked_at")
        when = f" at {_iso(checked)}" if isinstance(checked, int | float) else ""
        lines.append(f"  verify {shown}   {_verdict(verification)}{when}")
        lines.extend(f"             {line}" for line in _figures(verification))
    elif state.candidate is not None and state.phase != "stable":
        lines.append(f"  verify {state.candidate}   not yet")
    lines.extend(_health_lines(health))
    lines.append(f"  events (last {min(EVENTS_SHOWN, len(state.events))} of {len(state.events)})")
    for event in state.events[-EVENTS_SHOWN:]:
        detail = event.detail
        if len(detail) > DETAIL_WIDTH:
            detail = detail[: DETAIL_WIDTH - 3] + "..."
        lines.append(f"    {_iso(event.at)}  {event.who}  {event.action}  {detail}")
    return "\n".join(lines)


def _health_lines(health: Mapping[str, Any]) -> list[str]:
    lines = [f"  health     last {_value(health.get('window_s'))} s"]
    if health.get("unavailable"):
        lines.append(f"             unavailable: {health['unavailable']}")
    for role in ("stable", "candidate"):
        figures = health.get(role)
        if not isinstance(figures, Mapping):
            continue
        text = (
            f"{role} {figures.get('version')}: {figures.get('requests', 0)} requests, "
            f"{figures.get('failures', figures.get('errors', 0))} failed "
            f"({_pct(figures.get('error_rate'))}; {figures.get('timeouts', 0)} timeouts), "
            f"p50 {_ms(figures.get('p50_ms'))}, p95 {_ms(figures.get('p95_ms'))}"
        )
        if figures.get("compared"):
            text += (
                f"; shadow: {_pct(figures.get('agreement'))} of {figures.get('compared')} "
                "compared agree"
            )
            shift = figures.get("mean_confidence_shift")
            if isinstance(shift, int | float):
                text += f", confidence {shift:+.1f} points"
        lines.append(f"             {text}")
    return lines


def _split_text(state: RolloutState) -> str:
    split = state.split()
    if not split:
        return "none (no stable version)"
    return ", ".join(f"{version}: {percent:g} %" for version, percent in split.items())


# -- helpers: output ------------------------------------------------------------------------------


def _print_json(document: Any) -> None:
    # default=str: a verification result may hold values json does not know (paths, numpy).
    print(json.dumps(document, indent=2, default=str))


def _fail(message: str) -> None:
    print(f"rollout: {message}", file=sys.stderr)


def _clause(error: BaseException) -> str:
    """An exception's message to quote inside a sentence (without its own full stop)."""
    return str(error).strip().rstrip(".")


def _iso(seconds: float) -> str:
    """Seconds since the epoch as ISO 8601 UTC, to the second."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86_400:.0f} days"


def _pct(value: object) -> str:
    """A fraction in [0, 1] as a percentage ('-' when unknown)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value * 100:.1f} %".replace(".0 %", " %")
    return "-"


def _ms(value: object) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.0f} ms"
    return "-"


def _value(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
