"""LoRA adapters for the diffusion family: the request-side pieces (no torch here).

- `LoraRef` (name, weight) and `adapter_set_id`: the canonical key of an adapter set (sorted
  ``name:weight`` joined by ``,``), used as Serve's multiplexed model id and batch key.
- `extract_prompt_loras`: A1111's ``<lora:name:0.8>`` (weight optional) taken out of a prompt:
  the encoder never sees the tag.
- `read_lora_file` / `parse_lora_bytes`: a ``.safetensors`` LoRA as a state dict; pickle
  (``.bin``/``.pt``/``.ckpt``/``.pth``/``.pkl``) is refused before anything is read (loading a
  pickle runs code): `check_lora_filename`.
- `lora_layers` / `lora_rank`: what a state dict holds (LoRA matrix pairs, the largest rank),
  for the registration check (every layer must land on the base model).
- `check_lora_name`: a name that is safe in the catalogue, URLs and ``<lora:name>`` tags.

Loading onto a pipeline (`load_lora_weights(adapter_name=...)` + `set_adapters`) lives in
`models.diffusion.DiffusionModel`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from common.errors import InputError

MAX_LORAS = 5  # adapters per request
MAX_WEIGHT = 4.0
LORA_FILE = "pytorch_lora_weights.safetensors"  # diffusers' default weight_name (zoo LoRAs)
_PROMPT_TAG = re.compile(r"<lora:([A-Za-z0-9._-]{1,128})(?::(-?\d+(?:\.\d+)?))?>")
_SAFETENSORS_MAGIC_MAX_HEADER = 100 * 1024 * 1024
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
LORA_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")  # what <lora:...> tags can carry too
# keys of the "down"/A matrices of LoRA pairs in the formats diffusers loads (peft, diffusers'
# old attn-processor format, kohya/A1111)
_DOWN_KEY = re.compile(r"(lora_A|lora\.down|lora_down|lora_linear_layer\.down)(\.[^.]+)?"
                       r"\.weight$")


@dataclass(frozen=True, order=True)
class LoraRef:
    name: str
    weight: float = 1.0


def adapter_set_id(loras: tuple[LoraRef, ...] | list[LoraRef]) -> str:
    """``a:0.8,b:1`` — sorted by name, weights in their shortest form; '' for no adapters."""
    return ",".join(f"{r.name}:{r.weight:g}" for r in sorted(loras))


def parse_adapter_set_id(model_id: str) -> tuple[LoraRef, ...]:
    if not model_id:
        return ()
    out = []
    for part in model_id.split(","):
        name, _, weight = part.rpartition(":")
        out.append(LoraRef(name, float(weight)))
    return tuple(out)


def extract_prompt_loras(prompt: str) -> tuple[str, list[tuple[str, float | None]]]:
    """(prompt without ``<lora:...>`` tags, [(name, weight or None)]) in order of appearance."""
    found = [(m.group(1), float(m.group(2)) if m.group(2) is not None else None)
             for m in _PROMPT_TAG.finditer(prompt)]
    if not found:
        return prompt, []
    clean = re.sub(r"\s{2,}", " ", _PROMPT_TAG.sub(" ", prompt)).strip(" ,")
    return clean, found


def check_loras(loras: list[LoraRef] | tuple[LoraRef, ...], *, param: str = "loras") -> None:
    if len(loras) > MAX_LORAS:
        raise InputError(f"at most {MAX_LORAS} LoRA adapters per request, got {len(loras)}",
                         param=param)
    names = [r.name for r in loras]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"LoRA {dupes[0]!r} is given twice (the loras field and a <lora:...> "
                         "tag in the prompt count together): give it once", param=param)
    for ref in loras:
        if not -MAX_WEIGHT <= ref.weight <= MAX_WEIGHT:
            raise InputError(f"LoRA {ref.name!r}: weight must be between -{MAX_WEIGHT} and "
                             f"{MAX_WEIGHT}, got {ref.weight}", param=param)


def lora_file(location: str | Path) -> Path:
    """The .safetensors file of a LoRA at `location` (a file, or a folder holding
    `LORA_FILE` or exactly one .safetensors file)."""
    path = Path(location).expanduser()
    if path.is_dir():
        if (path / LORA_FILE).is_file():
            return path / LORA_FILE
        files = sorted(path.glob("*.safetensors"))
        if len(files) != 1:
            raise ValueError(f"{path} must hold exactly one .safetensors LoRA file, found "
                             f"{len(files)}")
        return files[0]
    return path


def check_lora_name(name: str) -> str:
    """`name` if it can be a catalogue name (lowercase letters, digits, ``.``, ``_``, ``-``;
    2–64 characters, starting with a letter or digit), else `ValueError` saying so."""
    if not isinstance(name, str) or not LORA_NAME.match(name):
        raise ValueError(f"LoRA name {name!r} must be 2-64 characters of lowercase letters, "
                         "digits, '.', '_' or '-', starting with a letter or digit (it is used "
                         "in <lora:name:weight> tags and URLs)")
    return name


def check_lora_filename(filename: str | None) -> None:
    """Refuse pickle files by name, before reading a byte: `ValueError` saying why."""
    suffix = Path(filename or "").suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise ValueError(f"{filename} is a pickle ({suffix}) file: only .safetensors LoRAs are "
                         "accepted, because loading a pickle runs code; convert it first (e.g. "
                         "load it in a trusted environment and save it with safetensors)")
    if filename and suffix != ".safetensors":
        raise ValueError(f"{filename}: only .safetensors LoRA files are accepted")


def parse_lora_bytes(data: bytes, filename: str = "upload.safetensors") -> dict:
    """The state dict of a .safetensors LoRA held in memory. `ValueError` saying why for
    anything else: a pickle (by name or by content: never unpickled), not safetensors,
    corrupt, empty."""
    from safetensors import SafetensorError
    from safetensors.torch import load as load_bytes

    check_lora_filename(filename)
    head = data[:8]
    if head[:2] == b"PK" or head[:1] == b"\x80":
        raise ValueError(f"{filename} is a pickle (torch.save) file: only .safetensors LoRAs "
                         "are accepted (loading a pickle runs code); convert it first")
    if len(head) < 8 or int.from_bytes(head, "little") > min(_SAFETENSORS_MAGIC_MAX_HEADER,
                                                             len(data) - 8):
        raise ValueError(f"{filename} is not a valid safetensors file (bad header)")
    try:
        state = load_bytes(data)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{filename} is corrupt: {exc}") from None
    if not state:
        raise ValueError(f"{filename} holds no tensors")
    return state


def lora_layers(state: dict) -> list[str]:
    """The LoRA layers (A/down matrices) a state dict holds, by key."""
    return sorted(k for k in state if _DOWN_KEY.search(k))


def lora_rank(state: dict) -> int:
    """The largest rank of the LoRA pairs in `state` (0 when it holds none)."""
    ranks = [min(state[k].shape) for k in lora_layers(state) if getattr(state[k], "ndim", 0) >= 2]
    return max(ranks, default=0)


def read_lora_file(location: str | Path) -> dict:
    """The state dict of a .safetensors LoRA. `ValueError` saying why for anything else:
    pickle files (never loaded), not a safetensors file, corrupt, empty."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = lora_file(location)
    if not path.is_file():
        raise ValueError(f"no LoRA file at {str(path)!r}")
    head = path.read_bytes()[:8] if path.stat().st_size >= 8 else b""
    if head[:2] == b"PK" or head[:1] == b"\x80":
        raise ValueError(f"{path.name} is a pickle (torch.save) file: only .safetensors LoRAs "
                         "are accepted (loading a pickle runs code); convert it first")
    if path.suffix.lower() != ".safetensors":
        raise ValueError(f"{path.name}: only .safetensors LoRA files are accepted")
    if len(head) < 8 or int.from_bytes(head, "little") > _SAFETENSORS_MAGIC_MAX_HEADER:
        raise ValueError(f"{path.name} is not a valid safetensors file (bad header)")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{path.name} is corrupt: {exc}") from None
    if not state:
        raise ValueError(f"{path.name} holds no tensors")
    return state
