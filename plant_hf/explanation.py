"""Self-contained HTML pages that show, for one document, which words each predicted label's attention reads."""

import html
import json
import re
from typing import Any

# The start of both pages: their own styles follow.
_HEAD = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>__TITLE__</title>
<style>
"""

# Where both pages' data and script begin: their own code follows.
_SCRIPT = """<script id="data" type="application/json">__DATA__</script>
<script>
"use strict";
const data = JSON.parse(document.getElementById("data").textContent);
"""

_PAGE = (
    _HEAD
    + """  body { font-family: system-ui, sans-serif; margin: 0; display: flex; height: 100vh; color: #1d1d1f; }
  nav { width: 22rem; padding: 1rem; overflow-y: auto; border-right: 1px solid #ddd; background: #fafafa; }
  main { flex: 1; padding: 1.5rem 2rem; overflow-y: auto; }
  h1 { font-size: 1.1rem; margin: 0 0 .3rem; }
  h2 { font-size: .8rem; text-transform: uppercase; letter-spacing: .05em; color: #666; margin: 1.2rem 0 .4rem; }
  button.label { display: flex; justify-content: space-between; width: 100%; text-align: left; margin: 2px 0;
                 padding: .35rem .5rem; border: 1px solid #ddd; border-radius: 4px; background: white;
                 cursor: pointer; font-size: .85rem; }
  button.label.selected { border-color: #c2410c; background: #fff7ed; }
  .gold { color: #15803d; font-weight: 600; }
  .score { color: #666; font-variant-numeric: tabular-nums; }
  #text { line-height: 1.8; white-space: pre-wrap; font-size: .95rem; }
  #text span.w { border-radius: 3px; }
  #legend { color: #666; font-size: .8rem; margin-bottom: 1rem; }
  li.missed { color: #b91c1c; }
  button.label.below { opacity: .55; }
  .meta { color: #888; font-size: .75rem; margin-bottom: .6rem; }
  .description { display: block; color: #666; font-size: .75rem; }
  #controls { display: flex; gap: .8rem; align-items: center; color: #666; font-size: .8rem; margin-bottom: .5rem; }
  #text span.w.peak { outline: 2px solid #c2410c; }
</style>
</head>
<body>
<nav>
  <h1>__TITLE__</h1>
  <div class="meta" id="meta"></div>
  <div class="score">click a label to see the words its attention reads</div>
  <h2>predicted labels</h2>
  <div id="labels"></div>
  <h2 id="missed-header" hidden>gold labels not predicted</h2>
  <ul id="missed"></ul>
  <h2 id="documents-header" hidden>nearest training documents with the label</h2>
  <ul id="documents"></ul>
</nav>
<main>
  <div id="controls">
    <label>shading <select id="view">
      <option value="linear">proportional</option>
      <option value="tempered">tempered (square root)</option>
      <option value="top">ten heaviest words</option>
    </select></label>
    <button id="jump" type="button">jump to the heaviest word</button>
  </div>
  <div id="legend"></div>
  <div id="text"></div>
</main>
"""
    + _SCRIPT
    + """const gold = new Set(data.gold || []);
let selected = 0;

function renderText() {
  const root = document.getElementById("text");
  root.textContent = "";
  let cursor = 0;
  data.words.forEach(function (word, index) {
    root.appendChild(document.createTextNode(data.text.slice(cursor, word[0])));
    const span = document.createElement("span");
    span.className = "w";
    span.dataset.index = index;
    span.textContent = data.text.slice(word[0], word[1]);
    root.appendChild(span);
    cursor = word[1];
  });
  root.appendChild(document.createTextNode(data.text.slice(cursor)));
}

// The shade of a word: its weight against the heaviest word's, tempered, or only for the ten heaviest words.
function alphaOf(weight, top, tenth, view) {
  if (view === "tempered") return Math.sqrt(Math.min(1, weight / top));
  if (view === "top") return weight >= tenth && weight > 0 ? Math.min(1, weight / top) : 0;
  return Math.min(1, weight / top);
}

function heaviest(weights) {
  return weights.indexOf(Math.max.apply(null, weights));
}

function shade(labelIndex) {
  selected = labelIndex;
  const view = document.getElementById("view").value;
  const weights = data.labels[labelIndex].weights;
  const top = Math.max(1e-12, Math.max.apply(null, weights));
  const sorted = weights.slice().sort(function (a, b) { return b - a; });
  const tenth = sorted[Math.min(9, sorted.length - 1)] || 0;
  const peak = heaviest(weights);
  document.querySelectorAll("#text span.w").forEach(function (span) {
    const index = Number(span.dataset.index);
    const alpha = alphaOf(weights[index], top, tenth, view);
    span.dataset.alpha = alpha.toFixed(3);
    span.style.backgroundColor = "rgba(234, 88, 12, " + alpha.toFixed(3) + ")";
    span.title = (100 * weights[index]).toFixed(1) + "% of the attention";
    span.classList.toggle("peak", index === peak);
  });
  document.querySelectorAll("button.label").forEach(function (button, index) {
    button.classList.toggle("selected", index === labelIndex);
  });
  const label = data.labels[labelIndex];
  let legend = "attention of label " + label.label + " (probability " + label.score.toFixed(3);
  if (label.threshold !== null) {
    legend += label.score >= label.threshold ? ", above" : ", below";
    legend += " its decision threshold " + label.threshold.toFixed(3);
  }
  document.getElementById("legend").textContent = legend + ")";
  const documents = document.getElementById("documents");
  documents.textContent = "";
  (label.documents || []).slice(0, 5).forEach(function (neighbour) {
    const item = document.createElement("li");
    item.textContent = neighbour.id + " (" + (100 * neighbour.weight).toFixed(1) + "% of the memory's vote)";
    documents.appendChild(item);
  });
  document.getElementById("documents-header").hidden = !(label.documents || []).length;
}

function jumpToPeak() {
  const span = document.querySelector("#text span.w.peak");
  if (span) span.scrollIntoView({block: "center"});
}

function renderLabels() {
  const root = document.getElementById("labels");
  data.labels.forEach(function (label, index) {
    const button = document.createElement("button");
    button.className = "label";
    if (label.threshold !== null && label.score < label.threshold) {
      button.classList.add("below");
      button.title = "below its decision threshold " + label.threshold.toFixed(3) + ": not predicted";
    }
    const name = document.createElement("span");
    name.textContent = label.label + (gold.has(label.label) ? " \u2713" : "");
    if (gold.has(label.label)) name.className = "gold";
    if (label.description) {
      const description = document.createElement("span");
      description.className = "description";
      description.textContent = label.description;
      name.appendChild(description);
    }
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = label.score.toFixed(3);
    button.appendChild(name);
    button.appendChild(score);
    button.addEventListener("click", function () { shade(index); });
    root.appendChild(button);
  });
  const predicted = new Set(data.labels.map(function (label) { return label.label; }));
  const missed = document.getElementById("missed");
  const notPredicted = (data.gold || []).filter(function (name) { return !predicted.has(name); });
  document.getElementById("missed-header").hidden = notPredicted.length === 0;
  notPredicted.forEach(function (name) {
    const item = document.createElement("li");
    item.className = "missed";
    item.textContent = name + (data.descriptions[name] ? ": " + data.descriptions[name] : "");
    missed.appendChild(item);
  });
  document.getElementById("meta").textContent = [data.model, data.created].filter(Boolean).join(" \u00b7 ");
}

// Opened as page.html#selftest the page clicks through every label and checks its own shading.
function selfTest() {
  const buttons = document.querySelectorAll("button.label");
  const problems = [];
  buttons.forEach(function (button, index) {
    button.click();
    if (selected !== index || !button.classList.contains("selected")) problems.push("label " + index + " not selected");
    const weights = data.labels[index].weights;
    const heaviest = weights.indexOf(Math.max.apply(null, weights));
    const span = document.querySelector('#text span.w[data-index="' + heaviest + '"]');
    const darkest = span && Number(span.dataset.alpha) === 1;
    if (weights.length && !darkest) problems.push("label " + index + " not shaded");
    const listed = document.querySelectorAll("#documents li").length;
    const expected = Math.min(5, (data.labels[index].documents || []).length);
    if (listed !== expected) problems.push("label " + index + " lists " + listed + " documents");
  });
  const view = document.getElementById("view");
  view.value = "top";
  view.dispatchEvent(new Event("change"));
  const lit = Array.from(document.querySelectorAll("#text span.w")).filter(function (span) {
    return Number(span.dataset.alpha) > 0;
  });
  if (lit.length > 10) problems.push(lit.length + " words shaded in the ten-word view");
  const predicted = new Set(data.labels.map(function (label) { return label.label; }));
  const anyMissed = (data.gold || []).some(function (name) { return !predicted.has(name); });
  if (document.getElementById("missed-header").hidden === anyMissed) problems.push("missed header shown wrongly");
  document.title = problems.length ? "selftest:fail:" + problems.join(";") : "selftest:ok:" + buttons.length;
  if (problems.length) console.error(problems.join("; "));
}

renderText();
renderLabels();
document.getElementById("view").addEventListener("change", function () { shade(selected); });
document.getElementById("jump").addEventListener("click", jumpToPeak);
if (data.labels.length) shade(0);
if (location.hash === "#selftest") selfTest();
</script>
</body>
</html>
"""
)


def explanation_page(
    text: str,
    predictions: list[dict[str, Any]],
    gold: list[str] | None = None,
    title: str = "document",
    thresholds: dict[str, float] | None = None,
    descriptions: dict[str, str] | None = None,
    model: str | None = None,
    created: str | None = None,
) -> str:
    """One document's page: the text with each word shaded by the attention of the selected predicted label.

    `predictions` are the pipeline's output with `explain=True, explain_words=0`: each label's `score` and its
    `evidence`, every word of the text with its `start`, `end` and `weight`. `thresholds` (each label's decision
    threshold) mark the labels that would not be predicted; `descriptions` name what a label means; `model` and
    `created` say what made the page and when. A label's `documents` (a model with a retrieval memory) are listed
    when it is selected: the nearest training documents that carry it, with their weight in its memory score.
    """
    words = sorted({(entry["start"], entry["end"]) for prediction in predictions for entry in prediction["evidence"]})
    position = {span: index for index, span in enumerate(words)}
    thresholds, descriptions = thresholds or {}, descriptions or {}
    labels = []
    for prediction in predictions:
        weights = [0.0] * len(words)
        for entry in prediction["evidence"]:
            weights[position[(entry["start"], entry["end"])]] = round(float(entry["weight"]), 6)
        name = prediction["label"]
        labels.append(
            {
                "label": name,
                "score": float(prediction["score"]),
                "threshold": thresholds.get(name),
                "description": descriptions.get(name),
                "weights": weights,
                "documents": [
                    {"id": str(neighbour["id"]), "weight": round(float(neighbour["weight"]), 4)}
                    for neighbour in prediction.get("documents", [])
                ],
            }
        )
    shown = {*(label["label"] for label in labels), *(gold or [])}
    data = {
        "text": text,
        "words": words,
        "labels": labels,
        "gold": list(gold or []),
        "descriptions": {name: descriptions[name] for name in shown if name in descriptions},
        "model": model,
        "created": created,
    }
    return _filled(_PAGE, title, data)


def explanation_index(rows: list[dict[str, Any]], model: str | None = None, created: str | None = None) -> str:
    """The index of a folder of pages: per document its page, its top labels with their probabilities, and (where
    gold labels are known) how many the top labels hit and which they missed; a click on a heading sorts by it
    (again: the other way), as does a link to the page ending in `#sort=id`, `best`, `hits` or `missed`.

    Each row holds `page`, `id`, `labels` (`[label, probability]`, best first) and `gold` (a list, or None).
    """
    data = {"rows": rows, "model": model, "created": created}
    return _filled(_INDEX, "explanations", data)


def _filled(template: str, title: str, data: dict[str, Any]) -> str:
    # No `<` may reach the script element: `</script>` would close it and `<!--<script` would swallow its end tag.
    payload = json.dumps(data, ensure_ascii=False).replace("<", "\\u003c")
    fill = {"__TITLE__": html.escape(title), "__DATA__": payload}
    return re.sub("__TITLE__|__DATA__", lambda match: fill[match.group(0)], template)


_INDEX = (
    _HEAD
    + """  body { font-family: system-ui, sans-serif; margin: 1.5rem 2rem; color: #1d1d1f; }
  h1 { font-size: 1.2rem; margin: 0 0 .2rem; }
  .meta { color: #888; font-size: .8rem; margin-bottom: 1rem; }
  table { border-collapse: collapse; width: 100%; font-size: .85rem; }
  th { text-align: left; border-bottom: 2px solid #ddd; padding: .4rem; cursor: pointer; user-select: none; }
  th:hover { color: #c2410c; }
  td { border-bottom: 1px solid #eee; padding: .4rem; vertical-align: top; }
  .hit { color: #15803d; font-weight: 600; }
  .missed { color: #b91c1c; }
  .score { color: #666; font-variant-numeric: tabular-nums; }
</style>
</head>
<body>
<h1>__TITLE__</h1>
<div class="meta" id="meta"></div>
<table>
  <thead><tr>
    <th data-key="id">document</th><th data-key="best">top labels (probability)</th>
    <th data-key="hits">gold hit in the top labels</th><th data-key="missed">gold labels missed</th>
  </tr></thead>
  <tbody id="rows"></tbody>
</table>
"""
    + _SCRIPT
    + """data.rows.forEach(function (row) {
  const gold = new Set(row.gold || []);
  const top = new Set(row.labels.map(function (entry) { return entry[0]; }));
  row.best = row.labels.length ? row.labels[0][1] : 0;
  row.hits = row.gold ? row.labels.filter(function (entry) { return gold.has(entry[0]); }).length : -1;
  row.missedLabels = (row.gold || []).filter(function (name) { return !top.has(name); });
  row.missed = row.missedLabels.length;
});
let order = {key: null, descending: false};

function render() {
  const body = document.getElementById("rows");
  body.textContent = "";
  data.rows.forEach(function (row) {
    const tr = document.createElement("tr");
    const link = document.createElement("a");
    link.href = row.page;
    link.textContent = row.id;
    const cells = [link].concat([1, 2, 3].map(function () { return document.createElement("span"); }));
    const gold = new Set(row.gold || []);
    row.labels.forEach(function (entry, index) {
      const label = document.createElement("span");
      label.className = gold.has(entry[0]) ? "hit" : "";
      label.textContent = entry[0];
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = " " + entry[1].toFixed(2) + (index + 1 < row.labels.length ? ", " : "");
      cells[1].appendChild(label);
      cells[1].appendChild(score);
    });
    cells[2].textContent = row.gold ? row.hits + " of " + row.gold.length : "-";
    cells[3].className = "missed";
    cells[3].textContent = row.gold ? row.missedLabels.join(", ") : "-";
    cells.forEach(function (content) {
      const td = document.createElement("td");
      td.appendChild(content);
      tr.appendChild(td);
    });
    body.appendChild(tr);
  });
}

document.querySelectorAll("th").forEach(function (header) {
  header.addEventListener("click", function () {
    const key = header.dataset.key;
    order = {key: key, descending: order.key === key ? !order.descending : key !== "id"};
    data.rows.sort(function (a, b) {
      const compared = a[key] < b[key] ? -1 : a[key] > b[key] ? 1 : 0;
      return order.descending ? -compared : compared;
    });
    render();
  });
});
document.getElementById("meta").textContent =
  [data.model, data.created, data.rows.length + " documents"].filter(Boolean).join(" \u00b7 ");
render();
// A link ending in #sort=<column> (id, best, hits, missed) opens the index sorted as a click on that heading sorts it.
const requested = /^#sort=([a-z]+)$/.exec(location.hash);
const requestedHeader = requested && document.querySelector('th[data-key="' + requested[1] + '"]');
if (requestedHeader) requestedHeader.click();
</script>
</body>
</html>
"""
)


__all__ = ["explanation_index", "explanation_page"]
