"""Encoder weights from the Hugging Face Hub (``huggingface_hub.hf_hub_download``), when online.

Only tensor files are fetched (``model.safetensors`` preferred, else ``pytorch_model.bin``, read
with ``torch.load(weights_only=True)`` by :mod:`.weights`); nothing is unpickled and no remote
code runs. Gated repositories (UNI, Virchow2, H-optimus-0) need the licence accepted on the
model page with the account whose token is passed (``token=`` or the ``HF_TOKEN`` variable);
a refused download raises :class:`~.weights.WeightsError` naming that step.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from stfusion.models.encoders.weights import WeightsError

__all__ = ["download_weights", "hub_url"]

log = logging.getLogger("stfusion")


def hub_url(repo_id: str) -> str:
    return f"https://huggingface.co/{repo_id}"


def download_weights(
    repo_id: str,
    filenames: Sequence[str],
    *,
    token: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
) -> Path:
    """Path of the first of ``filenames`` that ``repo_id`` holds, downloaded (or from the cache).

    ``token`` defaults to the ``HF_TOKEN`` environment variable. Raises :class:`WeightsError`
    with the step to take when the repository is gated, absent, or unreachable.
    """
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            GatedRepoError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
        )
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise WeightsError(
            "Downloading encoder weights needs the 'huggingface_hub' package (pip install huggingface_hub); "
            "or download the file yourself and pass its local path."
        ) from exc
    token = token if token is not None else os.environ.get("HF_TOKEN") or None
    url = hub_url(repo_id)
    access = f"accept the licence on {url} (logged in) and set HF_TOKEN (or pass token=) to a token of that account"
    tried: list[str] = []
    for filename in filenames:
        try:
            path = hf_hub_download(
                repo_id,
                filename,
                token=token,
                revision=revision,
                cache_dir=cache_dir,
                local_files_only=local_files_only,
            )
        except GatedRepoError as exc:
            raise WeightsError(f"{repo_id} is a gated repository and the download was refused: {access}.") from exc
        except RepositoryNotFoundError as exc:
            hint = "" if token else f" If it is gated or private, {access}."
            raise WeightsError(f"Repository {repo_id} was not found on the Hugging Face Hub ({url}).{hint}") from exc
        except LocalEntryNotFoundError as exc:  # offline (or local_files_only) and not cached
            raise WeightsError(
                f"Cannot download {filename} of {repo_id}: the Hub is unreachable and the file is not in "
                f"the local cache. Download it where you are online (and {access}), then pass its local path."
            ) from exc
        except EntryNotFoundError:
            tried.append(filename)
            continue
        except OSError as exc:  # other HTTP errors (401/403 without the gated flag, 5xx)
            raise WeightsError(
                f"Downloading {filename} of {repo_id} failed ({type(exc).__name__}: {exc}). "
                f"If access was refused, {access}."
            ) from exc
        log.info(f"encoder weights: {repo_id}/{filename} -> {path}")
        return Path(path)
    raise WeightsError(f"{repo_id} holds none of {tried}; pass a local weights file instead ({url}).")
