"""One clear message when the Hugging Face Hub refuses or cannot deliver a model or dataset.

transformers, datasets and huggingface_hub report the same few situations in different
shapes: a gated repository is a ``GatedRepoError`` wrapped in an ``OSError`` by
transformers and a ``DatasetNotFoundError`` whose cause is dropped by datasets; no network
is a ``LocalEntryNotFoundError`` over an ``httpx`` error, or a plain ``ConnectionError``.
:func:`hub_access` turns each of them into a :class:`HubAccessError` that says what could
not be loaded, why, and which setting loads the same thing from local files. The trainer
prints that message alone (no traceback) and exits with status 1.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Iterator
from pathlib import Path

# The local settings each hub-facing loader can use instead (quoted in the messages).
MODEL_HINT = (
    "model.name_or_path=<local dir> (a transformers model folder: config.json, the weights "
    "and the tokenizer files)"
)
TOKENIZER_HINT = "model.tokenizer=<local dir> (a folder with the tokenizer files)"
GLUE_HINT = (
    "data.glue_dir=<dir> holding <TASK>/train.tsv and <TASK>/dev.tsv (the GLUE download "
    "layout, e.g. ../shared/data/glue)"
)
GSM8K_HINT = "data.path=<dir> holding train.jsonl and test.jsonl (e.g. ../shared/data/gsm8k)"
OPENWEBTEXT_HINT = (
    "data.local_dir=<dir> holding a copy of the dataset repository (made where there is "
    "network with `hf download Skylion007/openwebtext --repo-type dataset --local-dir <dir>`)"
)
GPT2_INIT_HINT = (
    "model.init_from=<local dir> (a transformers GPT-2 folder), or model.init_from=scratch"
)

GATED = "gated"
MISSING = "missing"
REVISION = "revision"
TOKEN = "token"
UNREACHABLE = "unreachable"
SERVER = "server"


class HubAccessError(RuntimeError):
    """A model, tokenizer or dataset could not be loaded from the Hugging Face Hub; the
    message says why and names the local alternative. ``problem`` is one of
    ``gated``, ``missing``, ``revision``, ``token``, ``unreachable``, ``server``."""

    def __init__(self, message: str, problem: str) -> None:
        super().__init__(message)
        self.problem = problem


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _is_network_error(exc: BaseException) -> bool:
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    # huggingface_hub uses httpx2, transformers and datasets httpx: match either by name.
    return any(
        cls.__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "httpcore2")
        and cls.__name__ in ("TransportError", "TimeoutException")
        for cls in type(exc).__mro__
    )


def classify(exc: BaseException) -> str | None:
    """Which hub problem ``exc`` (or an exception it wraps) reports; ``None`` when it is not
    a hub access problem (a missing local file, a bad config, a bug)."""
    found = _find_problem(exc)
    return found[0] if found else None


def _find_problem(exc: BaseException) -> tuple[str, BaseException] | None:
    """The problem and the exception in ``exc``'s chain that best describes it."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        from datasets.exceptions import DatasetNotFoundError
    except ImportError:  # pragma: no cover - datasets is a core dependency
        DatasetNotFoundError = ()  # noqa: N806

    for err in _chain(exc):
        if isinstance(err, GatedRepoError):
            return GATED, err
        if isinstance(err, RevisionNotFoundError):
            return REVISION, err
        if isinstance(err, RepositoryNotFoundError):
            return MISSING, err
        if DatasetNotFoundError and isinstance(err, DatasetNotFoundError):
            # datasets re-raises these "from None": the message is all that is left.
            text = str(err)
            if "gated" in text:
                return GATED, err
            if text.startswith("Revision"):
                return REVISION, err
            return MISSING, err
        if isinstance(err, HfHubHTTPError):
            status = getattr(getattr(err, "response", None), "status_code", None)
            if status == 401:
                return TOKEN, err
            if status is not None and status >= 500:
                return SERVER, err
        if isinstance(err, LocalEntryNotFoundError) or _is_network_error(err):
            # The innermost error names the network failure ("Name or service not known").
            return UNREACHABLE, list(_chain(err))[-1]
    return None


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _token_source() -> str | None:
    """Where this machine's Hub token comes from (never the token itself)."""
    if os.environ.get("HF_TOKEN"):
        return "HF_TOKEN"
    try:
        from huggingface_hub import get_token

        return "the token stored by `hf auth login`" if get_token() else None
    except Exception:  # noqa: BLE001 - a broken token file is reported as no token
        return None


def _hub_url(repo_id: str, repo_type: str) -> str:
    prefix = "" if repo_type == "model" else f"{repo_type}s/"
    return f"https://huggingface.co/{prefix}{repo_id}"


def _summary(exc: BaseException) -> str:
    # The hub's messages start with a status line ("403 Client Error.") and the useful
    # sentence follows it.
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()][:2]
    return f"{type(exc).__name__}: {' '.join(lines)}" if lines else type(exc).__name__


def _library_words(exc: BaseException) -> bool:
    """Offline-mode errors whose advice ("set local_files_only to False") only misleads;
    a network error's own words ("Name or service not known") are worth showing."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    return isinstance(exc, (LocalEntryNotFoundError, OfflineModeIsEnabled))


def hub_access_message(
    problem: str,
    what: str,
    repo_id: str,
    local_hint: str,
    repo_type: str = "model",
    cause: BaseException | None = None,
) -> str:
    """The message for ``problem`` (see :func:`classify`) loading ``what`` ``repo_id``."""
    url = _hub_url(repo_id, repo_type)
    token = _token_source()
    if problem == GATED:
        who = (
            f"The Hub token on this machine ({token}) does not have access yet"
            if token
            else "No Hub token is set on this machine"
        )
        text = (
            f"{what} '{repo_id}' is gated on the Hugging Face Hub: only accounts that accepted "
            f"its licence may download it. {who}. Either\n"
            f"  1. accept the licence at {url} with your Hub account (Meta's models are "
            "approved within minutes to hours), then\n"
            "  2. log in on this machine with `hf auth login`, or set HF_TOKEN=<a read token "
            "of that account> (for SLURM jobs, in the job's environment),\n"
            f"or use a local copy: {local_hint}."
        )
    elif problem == MISSING:
        text = (
            f"{what} '{repo_id}' was not found on the Hugging Face Hub: the name is wrong, or "
            "the repository is private and this machine's token cannot see it. Check the name; "
            "for a private repository log in with `hf auth login` or set HF_TOKEN; or use a "
            f"local copy: {local_hint}."
        )
    elif problem == REVISION:
        text = (
            f"The requested revision of {what} '{repo_id}' does not exist on the Hugging Face "
            f"Hub (branches, tags and commits: {url}/tree/main). Or use a local copy: "
            f"{local_hint}."
        )
    elif problem == TOKEN:
        text = (
            f"The Hugging Face Hub rejected this machine's token ({token or 'none set'}) while "
            f"loading {what} '{repo_id}'. Log in again with `hf auth login` or set a valid "
            f"HF_TOKEN, or use a local copy: {local_hint}."
        )
    elif problem == SERVER:
        text = (
            f"The Hugging Face Hub answered with a server error while loading {what} "
            f"'{repo_id}'. Try again later, or use a local copy: {local_hint}."
        )
    else:
        from huggingface_hub import constants

        why = "HF_HUB_OFFLINE=1 is set" if _offline() else "no connection to the Hub"
        text = (
            f"{what} '{repo_id}' is not in the local Hugging Face cache "
            f"({constants.HF_HUB_CACHE}) and cannot be downloaded: {why}. Run once where the Hub "
            "is reachable, with the same HF_HOME, to cache it; or use a local copy: "
            f"{local_hint}."
        )
    if cause is not None and not (problem == UNREACHABLE and _library_words(cause)):
        text += f"\n(Hub: {_summary(cause)})"
    return text


def looks_local(name_or_path: str) -> bool:
    """Whether ``name_or_path`` can only be a local path, never a Hub id (``name`` or
    ``namespace/name``)."""
    text = str(name_or_path)
    return text.startswith(("/", ".", "~")) or text.count("/") > 1 or "\\" in text


@contextlib.contextmanager
def hub_access(
    what: str, repo_id: str, local_hint: str, repo_type: str = "model"
) -> Iterator[None]:
    """Run a hub-facing load; a hub access problem becomes a :class:`HubAccessError`.

    ``what`` names the thing for the user ("Model", "GLUE dataset"), ``local_hint`` the
    setting that loads it from local files. A local directory never reaches the Hub, so its
    errors (a missing file) pass through unchanged, as do errors that are not about the Hub.
    """
    if looks_local(repo_id) and not Path(str(repo_id)).expanduser().exists():
        # Hub ids have no leading "/", "." or "~" and at most one "/": this was meant as a
        # folder, and the hub's "Repo id must be in the form ..." would only confuse.
        raise FileNotFoundError(f"{what} {repo_id}: no such local file or directory")
    try:
        yield
    except HubAccessError:
        raise
    except Exception as exc:
        if Path(str(repo_id)).expanduser().exists():
            raise
        found = _find_problem(exc)
        if found is None:
            raise
        problem, cause = found
        raise HubAccessError(
            hub_access_message(problem, what, repo_id, local_hint, repo_type, cause=cause),
            problem,
        ) from exc


# ---------------------------------------------------------------------------------------
# Checks for the preflight: can a repository be read, without downloading its weights?
# ---------------------------------------------------------------------------------------
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


@functools.lru_cache(maxsize=8)
def _endpoint_answers(endpoint: str) -> bool:
    from huggingface_hub.utils import get_session

    try:
        # Any HTTP answer means the Hub is reachable; one request, no retries.
        get_session().head(endpoint, timeout=10)
    except Exception:  # noqa: BLE001 - every transport failure means "unreachable"
        return False
    return True


def hub_reachable() -> bool:
    """Whether the Hub answers from this machine (False in offline mode). Asked once per
    endpoint per process, so a preflight without network fails fast instead of retrying."""
    from huggingface_hub import constants

    return not _offline() and _endpoint_answers(constants.ENDPOINT)


def weight_files(folder: Path) -> list[Path] | None:
    """The weight files of a transformers model folder (every shard an index names), or
    ``None`` when they are not all there."""
    for index in WEIGHT_INDEXES:
        if (folder / index).is_file():
            shards = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
            paths = [folder / s for s in shards]
            return paths if all(p.is_file() for p in paths) else None
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return [folder / name]
    return None


def cached_snapshot(repo_id: str, repo_type: str, need_weights: bool = False) -> Path | None:
    """A snapshot of ``repo_id`` in the Hugging Face cache (with complete weights when
    ``need_weights``), or ``None``. Datasets also count when ``datasets`` has built its own
    arrow cache of them."""
    from huggingface_hub import constants

    repo_dir = Path(constants.HF_HUB_CACHE) / f"{repo_type}s--{repo_id.replace('/', '--')}"
    snapshots = sorted((repo_dir / "snapshots").glob("*")) if repo_dir.is_dir() else []
    for snapshot in snapshots:
        if not need_weights or weight_files(snapshot):
            return snapshot
    if repo_type == "dataset":
        import datasets

        built = Path(datasets.config.HF_DATASETS_CACHE) / repo_id.replace("/", "___")
        if built.is_dir():
            return built
    return None


def check_repo(
    repo_id: str, repo_type: str, what: str, local_hint: str, need_weights: bool = False
) -> tuple[bool, str]:
    """Whether a run can read ``repo_id``: from the cache, or from the Hub with this
    machine's token (one ``auth-check`` request; nothing is downloaded). Returns
    ``(ok, detail)``, the detail being :func:`hub_access_message`'s text on failure."""
    cached = cached_snapshot(repo_id, repo_type, need_weights)
    if not hub_reachable():
        if cached is not None:
            return True, f"in the local cache ({cached}); the Hub is not reachable from here"
        return False, hub_access_message(UNREACHABLE, what, repo_id, local_hint, repo_type)
    from huggingface_hub import HfApi

    try:
        HfApi().auth_check(repo_id, repo_type=repo_type)
    except Exception as exc:  # noqa: BLE001 - classified below, anything else is reported
        found = _find_problem(exc)
        if found is None:
            return False, f"{what} '{repo_id}': {type(exc).__name__}: {exc}"
        problem, cause = found
        if problem == UNREACHABLE and cached is not None:
            return True, f"in the local cache ({cached}); the Hub did not answer"
        return False, hub_access_message(problem, what, repo_id, local_hint, repo_type, cause)
    token = _token_source()
    detail = f"readable on the Hub ({'with ' + token if token else 'no token needed'})"
    if need_weights:
        detail += (
            f"; weights cached in {cached}"
            if cached is not None
            else "; its weights are downloaded when the run starts"
        )
    return True, detail
