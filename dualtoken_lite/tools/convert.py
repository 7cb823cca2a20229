"""Convert a released DualToken checkpoint to a model folder: ``python -m dualtoken_lite convert``.

    python -m dualtoken_lite convert epoch_20.pt --out models/dualtoken-384 \
        --config model_config_siglip_384_rvq8/config.json                          # the config it was trained with
    python -m dualtoken_lite convert ckpt.pt --out DIR --model model_config_siglip_256_rvq4   # name the config
    python -m dualtoken_lite reconstruct models/dualtoken-384 cat.jpg --out recon/              # then use it

The folder is what every other command takes (``config.json`` + ``model.safetensors``, loaded strictly by
``DualToken.from_pretrained``), plus ``conversion_report.json`` and ``conversion_report.md``: every source key and
what became of it (renamed, transformed, dropped and why), and the notes worth reading. The mapping itself is
``dualtoken_lite.model.release``.

Options: ``--model`` the release's config name or one of our presets (default: recognised from the layout and
the tower's grid); ``--config`` the release's ``config.json`` the checkpoint was trained with (default: a
``config.json`` beside the checkpoint, if it is a release config), checked against the preset and the tensors;
``--trust-pickle`` unpickle a file that the safe loader refuses (runs code stored in it: only for files whose
source you trust). A file that cannot be converted ends in one line naming the reason, exit code 2.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from dualtoken_lite.model.dualtoken import DualToken
from dualtoken_lite.model.hf_siglip import KeyMap
from dualtoken_lite.model.release import model_from_release
from dualtoken_lite.model.release_config import RELEASE_MODELS
from dualtoken_lite.model.release_files import (
    ReleaseFormatError,
    read_release_checkpoint,
    read_release_config,
)
from dualtoken_lite.settings import run_cli, to_dict

REPORT_JSON, REPORT_MD = "conversion_report.json", "conversion_report.md"


def kind(entry: KeyMap) -> str:
    """'mapped' (same tensor, maybe renamed), 'transformed' (reshaped, split, stacked, set) or 'dropped'."""
    if entry.target is None:
        return "dropped"
    return "mapped" if entry.how in ("renamed", "same name") else "transformed"


def write_report(folder: Path, source: Path, log: list[KeyMap], notes: list[str], model: DualToken) -> dict:
    """conversion_report.json (every entry) and conversion_report.md (the summary and the non-trivial entries)."""
    counts = Counter(kind(e) for e in log)
    report = {
        "source": str(source), "model": to_dict(model.cfg), "counts": dict(counts), "notes": notes,
        "source_keys": len({s for e in log for s in e.sources}),
        "entries": [{"kind": kind(e), "sources": list(e.sources), "target": e.target, "how": e.how} for e in log],
    }
    (folder / REPORT_JSON).write_text(json.dumps(report, indent=1) + "\n")
    lines = [f"# Conversion of `{source.name}`", "",
             f"{report['source_keys']} source tensors: {counts['mapped']} mapped by name, "
             f"{counts['transformed']} transformed, {counts['dropped']} dropped. Every entry: `{REPORT_JSON}`.", ""]
    if notes:
        lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    lines += ["## Transformed and dropped", "", "| source | target | how |", "|---|---|---|"]
    lines += [f"| {', '.join(e.sources) or '-'} | {e.target or '-'} | {e.how} |" for e in log if kind(e) != "mapped"]
    (folder / REPORT_MD).write_text("\n".join(lines) + "\n")
    return report


def release_settings(source: Path, config: str | Path | None) -> tuple[dict | None, list[str]]:
    """The release config to check against: ``config``, else a release ``config.json`` beside the checkpoint."""
    if config is not None:
        return read_release_config(config), []
    beside = source.parent / "config.json"
    if not beside.is_file():
        return None, []
    try:
        return read_release_config(beside), [f"read the release config beside the checkpoint: {beside}"]
    except ReleaseFormatError as err:
        return None, [f"ignored {beside}: {err}"]


def convert(source: str | Path, out: str | Path, model_name: str | None = None, config: str | Path | None = None,
            trust_pickle: bool = False) -> dict:
    """Release checkpoint file -> model folder + report; the folder is reloaded strictly before returning."""
    source, out = Path(source), Path(out)
    state = read_release_checkpoint(source, trust_pickle=trust_pickle)
    settings, found = release_settings(source, config)
    model, log, notes = model_from_release(state, model_name, settings)
    notes = found + notes
    model.save_pretrained(out)
    report = write_report(out, source, log, notes, model)
    DualToken.from_pretrained(out)  # strict: any missing, extra or mis-shaped tensor would raise here
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dualtoken_lite convert", description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="the release checkpoint (.pt / .bin torch file, or .safetensors)")
    parser.add_argument("--out", required=True, help="folder to write (config.json, model.safetensors, reports)")
    parser.add_argument("--model", default=None, help=f"release config name {sorted(RELEASE_MODELS)} or a preset")
    parser.add_argument("--config", default=None, help="the release's config.json (file or folder) it was trained with")
    parser.add_argument("--trust-pickle", action="store_true", help="full unpickle (runs code in the file)")
    args = parser.parse_args(argv)
    return run_cli(lambda _: report_conversion(args))


def report_conversion(args: argparse.Namespace) -> int:
    """Convert as the parsed command line asks and print the summary."""
    report = convert(args.checkpoint, args.out, args.model, args.config, args.trust_pickle)
    counts = report["counts"]
    print(f"wrote {args.out}/ ({report['source_keys']} source tensors: {counts.get('mapped', 0)} mapped, "
          f"{counts.get('transformed', 0)} transformed, {counts.get('dropped', 0)} dropped; see {REPORT_MD})")
    for note in report["notes"]:
        print(f"note: {note}")
    return 0
