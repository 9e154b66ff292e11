"""Label Studio conventions, both ways: tasks and label config out, exports (JSON, JSON_MIN, CSV) in.

Everything here was checked against a running Label Studio 1.23 (``tests/test_labelstudio.py``):

- **Order.** Label Studio treats a prediction's root ``score`` as a confidence: its Data Manager
  sorts by it and its "Uncertainty sampling" queue serves the *lowest* first. tlkit therefore
  writes ``score = rank / (N + 1)``, so ascending order is tlkit's rank (rank 1 first) for every
  strategy. tlkit's own usefulness score and rank go into ``data`` (``tlkit_score``,
  ``tlkit_rank``), which the Data Manager can sort and filter (it cannot sort ``meta`` fields). The
  model's confidence in its predicted class stays in ``result[].score``.
- **Model version.** Label Studio pins a project's ``model_version`` to the first one it sees and
  shows only those predictions; every round therefore uses the same version, :data:`MODEL_VERSION`.
- **Image URLs.** Local files are served as ``/data/local-files/?d=<path>``, the path relative to
  ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`` and URL-quoted. The document root must be a parent of
  the pool (Label Studio refuses a Local Storage equal to the root), so a project records the root
  (``label_studio_root``, by default the pool's parent) and builds ``?d=<pool name>/<image>``.
- **Exports.** JSON has every annotation (``was_cancelled``, ``ground_truth``, times). JSON_MIN and
  CSV have one row per non-cancelled annotation with the task's ``data`` fields and the choice
  under the control's name (``choice``), and leave out cancelled annotations and ``ground_truth``.
  Every task carries ``data.tlkit_path`` so all three formats map back to pool paths without
  parsing URLs.
- **Multi-label.** A multi-label project's config has ``<Choices choice="multiple">``; an annotation's
  ``value.choices`` is the image's set of classes (an empty result: reviewed, no class present). JSON
  keeps the list; JSON_MIN writes ``{"choices": [...]}`` for two or more choices and the plain string
  for one; CSV writes the same as JSON text. Each becomes one :class:`Vote` whose ``label`` is the
  set's canonical text (:func:`tlkit.active.labeltext.join_labels`), so agreement means the same set.
  Predictions carry the predicted set with, as ``score``, the probability the model gives that exact
  set (the product over classes of p or 1 - p).
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import quote, unquote
from xml.sax.saxutils import quoteattr

from tlkit.active.labeltext import SKIP_WORDS, join_labels, split_labels
from tlkit.core.constants import LABEL_DELIM
from tlkit.core.errors import TlkitError

#: The one prediction ``model_version`` of every tlkit round (see the module docstring).
MODEL_VERSION = "tlkit"
DEFAULT_PREFIX = "/data/local-files/?d="
FROM_NAME, TO_NAME, DATA_KEY = "choice", "image", "image"
#: Columns of JSON_MIN/CSV exports that are not the label.
EXPORT_META = frozenset({"id", "annotator", "annotation_id", "created_at", "updated_at", "lead_time", "image",
                         "tlkit_path", "tlkit_rank", "tlkit_score", "tlkit_round", "agreement"})


@dataclass(frozen=True)
class ImageUrls:
    """Maps pool paths to Label Studio image URLs and back.

    Attributes:
        prefix: URL prefix before the root-relative path (``/data/local-files/?d=``).
        root: the folder URLs are relative to (Label Studio's document root).
        pool_root: the project's pool folder (inside ``root``).
    """

    prefix: str
    root: Path
    pool_root: Path

    def url(self, path: str) -> str:
        """URL of the pool image ``path`` (POSIX, relative to the pool root)."""
        rel = posixpath.normpath(posixpath.join(self._pool_rel(), path))
        return self.prefix + quote(rel, safe="/")

    def path(self, url: str) -> str | None:
        """Pool path of ``url``, or None when the URL is not under this prefix and pool."""
        if not url.startswith(self.prefix):
            return None
        rel = posixpath.normpath(unquote(url[len(self.prefix):]))
        pool_rel = self._pool_rel()
        if pool_rel == ".":
            return None if rel.startswith("../") or rel == ".." else rel
        if not rel.startswith(pool_rel + "/"):
            return None
        return rel[len(pool_rel) + 1:]

    def _pool_rel(self) -> str:
        return Path(self.pool_root).relative_to(self.root).as_posix()


def check_root(root: Path, pool_root: Path) -> None:
    """Fail unless ``root`` contains ``pool_root`` (Label Studio serves only files under its root)."""
    try:
        pool_root.relative_to(root)
    except ValueError:
        raise TlkitError(f"--ls-root {root} does not contain the pool {pool_root}; pass a parent folder of the pool "
                         "(Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT)") from None


def label_config(classes: Iterable[str], *, multilabel: bool = False) -> str:
    """Label Studio labeling config (XML) for image classification over ``classes``: one choice per
    image, or any set of them (``multilabel``: ``choice="multiple"``)."""
    choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in classes)
    kind = "multiple" if multilabel else "single"
    return (
        "<View>\n"
        f'  <Image name="{TO_NAME}" value="${DATA_KEY}"/>\n'
        f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="{kind}" showInline="true">\n'
        f"{choices}\n"
        "  </Choices>\n"
        "</View>\n"
    )


def rank_score(rank: int, n: int) -> float:
    """A prediction's root ``score`` for tlkit's ``rank`` among ``n``: ascending score = rank order."""
    return round(rank / (n + 1), 6)


def choice_result(label: str, confidence: float | None, from_name: str = FROM_NAME, to_name: str = TO_NAME,
                  *, multilabel: bool = False) -> list[dict[str, Any]]:
    """A prediction's ``result``: the predicted class as the Choices value, with the model's confidence.

    ``multilabel``: ``label`` is a set's text (``cat;dog``) and the value lists its classes; an empty
    set gives an empty result (Label Studio shows no choice ticked).
    """
    names = [n for n in label.split(LABEL_DELIM) if n] if multilabel else [label]
    if not names:
        return []
    return [{"from_name": from_name, "to_name": to_name, "type": "choices", "value": {"choices": names},
             "score": confidence}]


def tasks(rows: list[dict[str, Any]], urls: ImageUrls, round_no: int, *, multilabel: bool = False
          ) -> list[dict[str, Any]]:
    """Label Studio import tasks for a query (``rows`` as in query.csv, in rank order).

    ``multilabel``: ``predicted`` is the predicted set's text (``cat;dog``), ``confidence`` the
    probability of that exact set; a row with a confidence has a model even when its set is empty.
    """
    n = len(rows)
    out = []
    for row in rows:
        rank = int(row["rank"])
        data = {DATA_KEY: urls.url(row["path"]), "tlkit_path": row["path"], "tlkit_rank": rank,
                "tlkit_score": float(row["score"]), "tlkit_round": round_no}
        task: dict[str, Any] = {"data": data, "meta": {"tlkit_path": row["path"], "tlkit_round": round_no,
                                                        "rank": rank}}
        result = []
        if row.get("predicted") or (multilabel and row.get("confidence") not in (None, "")):
            # no model yet (cold start): the prediction only orders the tasks
            conf = float(row["confidence"]) if row.get("confidence") not in (None, "") else None
            result = choice_result(row.get("predicted") or "", conf, multilabel=multilabel)
        task["predictions"] = [{"model_version": MODEL_VERSION, "score": rank_score(rank, n), "result": result}]
        out.append(task)
    return out


# ---------------------------------------------------------------------------------------- exports


@dataclass(frozen=True)
class Vote:
    """One annotation of one image, as found in a label file.

    Attributes:
        path: the image's pool path (None when the task's image is not a pool image).
        label: the chosen class ("" for a cancelled annotation).
        where: where it was found, for messages ("export.json task 12").
        cancelled: the annotator skipped the task.
        ground_truth: the annotation is marked ground truth (JSON exports only).
        time: ISO time of the annotation's last update ("" when unknown).
        source: "labelstudio" (several votes per image are normal) or "csv" (one row per image).
        image: the task's image URL or raw path, for messages about unknown images.
        export: the Label Studio export format it came from (``JSON``, ``JSON_MIN``, ``CSV``), or "".
    """

    path: str | None
    label: str
    where: str
    cancelled: bool = False
    ground_truth: bool = False
    time: str = ""
    source: str = "labelstudio"
    image: str = ""
    export: str = ""


def read_votes(file: Path, urls: ImageUrls, *, multilabel: bool = False) -> list[Vote]:
    """Votes from a CSV ``path,label``, or a Label Studio JSON, JSON_MIN or CSV export.

    ``multilabel``: each vote's label is the annotation's set of classes as text (module docstring);
    a plain CSV may name its column ``labels`` or ``label``, classes joined by ``;``.
    """
    if not file.is_file():
        raise TlkitError(f"label file not found: {file}")
    text = _read_text(file)
    if file.suffix.lower() == ".json" or text.lstrip().startswith(("[", "{")):
        return _json_votes(file, text, urls, multilabel)
    return _csv_votes(file, text, urls, multilabel)


def _read_text(file: Path) -> str:
    data = file.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise TlkitError(f"{file} is not UTF-8 text (byte {e.start}); export or save it as UTF-8 and import again") from None


def _json_votes(file: Path, text: str, urls: ImageUrls, multilabel: bool = False) -> list[Vote]:
    try:
        items = json.loads(text)
    except ValueError as e:
        raise TlkitError(f"{file} is not valid JSON: {e}") from None
    except RecursionError:
        raise TlkitError(f"{file} is nested too deeply to be a Label Studio export; export the tasks again") from None
    if not isinstance(items, list):
        raise TlkitError(f"{file} is not a Label Studio export (expected a JSON list of tasks, got {type(items).__name__})")
    votes: list[Vote] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise TlkitError(f"{file.name} item {i} is a {type(item).__name__}, not a task object; "
                             "export from Label Studio as JSON, JSON_MIN or CSV")
        if "data" in item or "annotations" in item or "completions" in item:
            votes.extend(task_votes(item, urls, f"{file.name} task {item.get('id', i)}", export="JSON",
                                    multilabel=multilabel))
        else:
            votes.extend(_min_votes(file, f"{file.name} item {i}", item, urls, export="JSON_MIN", multilabel=multilabel))
    return votes


def task_votes(task: dict[str, Any], urls: ImageUrls, where: str, export: str = "", *, multilabel: bool = False
               ) -> list[Vote]:
    """The votes of one Label Studio task (as exported as JSON, or served by its API) with its annotations.

    ``multilabel``: a vote per submitted annotation, its label the set's text (no choice: the empty set).
    """
    data, meta = task.get("data") or {}, task.get("meta") or {}
    if not isinstance(data, dict) or not isinstance(meta, dict):
        raise TlkitError(f"{where}: 'data' and 'meta' must be objects; export from Label Studio as JSON")
    path, image = task_path(data.get("tlkit_path") or meta.get("tlkit_path"), data.get(DATA_KEY), urls)
    anns = task.get("annotations") or task.get("completions") or []
    if not isinstance(anns, list):
        raise TlkitError(f"{where}: 'annotations' must be a list")
    out = []
    for j, ann in enumerate(anns):
        if not isinstance(ann, dict):
            raise TlkitError(f"{where}: annotation {j} is not an object")
        w = f"{where} annotation {ann.get('id', j)}"
        time = str(ann.get("updated_at") or ann.get("created_at") or "")
        if ann.get("was_cancelled"):
            out.append(Vote(path, "", w, cancelled=True, time=time, image=image, export=export))
            continue
        label = _choices(ann.get("result") or [], w) if multilabel else _choice(ann.get("result") or [], w)
        if label is not None:
            out.append(Vote(path, label, w, ground_truth=bool(ann.get("ground_truth")), time=time, image=image,
                            export=export))
    return out


def _choice(results: Any, where: str) -> str | None:
    if not isinstance(results, list):
        raise TlkitError(f"{where}: 'result' must be a list")
    for res in results:
        value = res.get("value") if isinstance(res, dict) else None
        choices = value.get("choices") if isinstance(value, dict) else None
        if choices:
            if not isinstance(choices, list) or len(choices) > 1:
                raise TlkitError(f"{where}: several choices {choices}; tlkit needs one label per image")
            return str(choices[0]).strip()
    return None


def _choices(results: Any, where: str) -> str:
    """A multi-choice annotation's set of classes as text (``""``: no choice ticked)."""
    if not isinstance(results, list):
        raise TlkitError(f"{where}: 'result' must be a list")
    names: list[str] = []
    for res in results:
        value = res.get("value") if isinstance(res, dict) else None
        choices = value.get("choices") if isinstance(value, dict) else None
        if choices is not None:
            if not isinstance(choices, list):
                raise TlkitError(f"{where}: 'choices' must be a list, not {type(choices).__name__}")
            names.extend(str(c) for c in choices)
    return _set_text(names, where)


def _set_text(names: list[str], where: str) -> str:
    """The set's canonical text; a class holding the delimiter cannot be told apart and is refused."""
    bad = next((n for n in names if LABEL_DELIM in n), None)
    if bad is not None:
        raise TlkitError(f"{where}: class {bad!r} holds {LABEL_DELIM!r}, which separates classes in a multi-label "
                         "project; rename the class in Label Studio")
    return join_labels(names)


def _min_value_set(value: Any, where: str) -> str:
    """A JSON_MIN / CSV cell of a multi-choice control as a set's text.

    JSON_MIN writes one choice as a string and several as ``{"choices": [...]}``; the CSV export
    writes that object as JSON text; no choice: the column is missing or empty.
    """
    if isinstance(value, str) and value.strip().startswith("{"):
        try:
            value = json.loads(value)
        except ValueError:
            raise TlkitError(f"{where}: cannot read the choices {value!r}; export the tasks again") from None
    if isinstance(value, dict):
        value = value.get("choices")
    if value is None:
        return ""
    if isinstance(value, list):
        return _set_text([str(v) for v in value], where)
    return _set_text([str(value)], where)


def _min_votes(file: Path, where: str, row: dict[str, Any], urls: ImageUrls, export: str,
               multilabel: bool = False) -> list[Vote]:
    """A JSON_MIN item or a Label Studio CSV row: data fields + the choice under the control's name."""
    path, image = task_path(row.get("tlkit_path"), row.get(DATA_KEY), urls)
    label_cols = [k for k in row if k not in EXPORT_META]
    col = FROM_NAME if FROM_NAME in row else (label_cols[0] if len(label_cols) == 1 else None)
    if multilabel and col is None and not label_cols:  # an annotation without a choice: the empty set
        w = f"{where} (annotation {row.get('annotation_id', '?')})"
        return [Vote(path, "", w, time=str(row.get("updated_at") or row.get("created_at") or ""), image=image,
                     export=export)]
    if col is None and not label_cols:
        return []  # an annotation without a choice
    if col is None:
        raise TlkitError(f"{where}: cannot tell which column holds the label (found {sorted(row)}); "
                         f"name the Choices control '{FROM_NAME}' (tlkit's label_config.xml does)")
    value = row.get(col)
    if multilabel:
        w = f"{where} (annotation {row.get('annotation_id', '?')})"
        return [Vote(path, _min_value_set(value, w), w, time=str(row.get("updated_at") or row.get("created_at") or ""),
                     image=image, export=export)]
    if isinstance(value, dict):  # JSON_MIN writes {"choices": [...]} for multi-choice controls
        value = value.get("choices")
    if isinstance(value, list):
        if len(value) > 1:
            raise TlkitError(f"{where}: several choices {value}; tlkit needs one label per image")
        value = value[0] if value else ""
    w = f"{where} (annotation {row.get('annotation_id', '?')})"
    label = "" if value is None else str(value).strip()
    return [Vote(path, label, w, time=str(row.get("updated_at") or row.get("created_at") or ""), image=image,
                 export=export)]


def task_path(tlkit_path: Any, image: Any, urls: ImageUrls) -> tuple[str | None, str]:
    """(pool path as the task names it, or None; the image as named, for messages)."""
    image = "" if image is None else str(image)
    if tlkit_path:
        named = tlkit_path if isinstance(tlkit_path, str) else None  # a number or an object names no file
        return named, image or str(tlkit_path)
    return urls.path(image), image


def _csv_votes(file: Path, text: str, urls: ImageUrls, multilabel: bool = False) -> list[Vote]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    cols = reader.fieldnames or []
    if multilabel and "path" in cols and ("labels" in cols or "label" in cols):
        col = "labels" if "labels" in cols else "label"

        def value(r: dict) -> str:
            text = (r.get(col) or "").strip()
            return text if text.lower() in SKIP_WORDS else join_labels(split_labels(text))

        return [Vote(r.get("path") or "", value(r), f"{file.name} line {i + 2}", source="csv",
                     image=(r.get("path") or "").strip()) for i, r in enumerate(reader)]
    if "path" in cols and "label" in cols:
        return [Vote(r.get("path") or "", (r.get("label") or "").strip(), f"{file.name} line {i + 2}",
                     source="csv", image=(r.get("path") or "").strip())
                for i, r in enumerate(reader)]
    if DATA_KEY in cols or "tlkit_path" in cols:
        return [v for i, r in enumerate(reader)
                for v in _min_votes(file, f"{file.name} line {i + 2}", r, urls, "CSV", multilabel)]
    raise TlkitError(f"{file} needs the columns path,label, or must be a Label Studio CSV export "
                     f"(columns image, choice, ...); found {cols or 'no header'}")


def setup_steps(urls: ImageUrls, config_xml: Path) -> list[str]:
    """The Label Studio setup under which this project's task files work, as numbered steps."""
    local = urls.prefix == DEFAULT_PREFIX
    steps = []
    if local:
        steps.append(f"Start Label Studio with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true "
                     f"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={urls.root}")
    steps.append(f"Create a project; Settings > Labeling Interface > Code: paste {config_xml}")
    if local:
        steps.append(f"Settings > Cloud Storage > Add Source Storage > Local files, absolute path {urls.pool_root} "
                     "(no sync needed: the task files point at the images)")
    steps.append("Each round: Import rounds/NNNN/labelstudio.json; sort the Data Manager by prediction score, "
                 "ascending (= tlkit's rank), or set the project's sampling to 'Uncertainty sampling'")
    steps.append("Export (JSON keeps skips and ground truth; JSON_MIN and CSV work too) and run tlkit al-import")
    return steps
