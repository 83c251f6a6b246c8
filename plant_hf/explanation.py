"""Self-contained HTML pages that show, for one document, which words each predicted label's attention reads."""

import html
import json
import re
from typing import Any

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>__TITLE__</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 0; display: flex; height: 100vh; color: #1d1d1f; }
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
</style>
</head>
<body>
<nav>
  <h1>__TITLE__</h1>
  <div class="score">click a label to see the words its attention reads</div>
  <h2>predicted labels</h2>
  <div id="labels"></div>
  <h2>gold labels not predicted</h2>
  <ul id="missed"></ul>
</nav>
<main>
  <div id="legend"></div>
  <div id="text"></div>
</main>
<script id="data" type="application/json">__DATA__</script>
<script>
"use strict";
const data = JSON.parse(document.getElementById("data").textContent);
const gold = new Set(data.gold || []);
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

function shade(labelIndex) {
  selected = labelIndex;
  const weights = data.labels[labelIndex].weights;
  const top = Math.max(1e-12, Math.max.apply(null, weights));
  document.querySelectorAll("#text span.w").forEach(function (span) {
    const weight = weights[Number(span.dataset.index)];
    const alpha = Math.min(1, weight / top);
    span.dataset.alpha = alpha.toFixed(3);
    span.style.backgroundColor = "rgba(234, 88, 12, " + alpha.toFixed(3) + ")";
    span.title = (100 * weight).toFixed(1) + "% of the attention";
  });
  document.querySelectorAll("button.label").forEach(function (button, index) {
    button.classList.toggle("selected", index === labelIndex);
  });
  const label = data.labels[labelIndex];
  document.getElementById("legend").textContent =
    "attention of label " + label.label + " (probability " + label.score.toFixed(3) + ")";
}

function renderLabels() {
  const root = document.getElementById("labels");
  data.labels.forEach(function (label, index) {
    const button = document.createElement("button");
    button.className = "label";
    const name = document.createElement("span");
    name.textContent = label.label + (gold.has(label.label) ? " \u2713" : "");
    if (gold.has(label.label)) name.className = "gold";
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
  (data.gold || []).filter(function (name) { return !predicted.has(name); }).forEach(function (name) {
    const item = document.createElement("li");
    item.className = "missed";
    item.textContent = name;
    missed.appendChild(item);
  });
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
  });
  document.title = problems.length ? "selftest:fail:" + problems.join(";") : "selftest:ok:" + buttons.length;
  if (problems.length) console.error(problems.join("; "));
}

renderText();
renderLabels();
if (data.labels.length) shade(0);
if (location.hash === "#selftest") selfTest();
</script>
</body>
</html>
"""


def explanation_page(
    text: str, predictions: list[dict[str, Any]], gold: list[str] | None = None, title: str = "document"
) -> str:
    """One document's page: the text with each word shaded by the attention of the selected predicted label.

    `predictions` are the pipeline's output with `explain=True, explain_words=0`: each label's `score` and its
    `evidence`, every word of the text with its `start`, `end` and `weight`.
    """
    words = sorted({(entry["start"], entry["end"]) for prediction in predictions for entry in prediction["evidence"]})
    position = {span: index for index, span in enumerate(words)}
    labels = []
    for prediction in predictions:
        weights = [0.0] * len(words)
        for entry in prediction["evidence"]:
            weights[position[(entry["start"], entry["end"])]] = round(float(entry["weight"]), 6)
        labels.append({"label": prediction["label"], "score": float(prediction["score"]), "weights": weights})
    data = {"text": text, "words": words, "labels": labels, "gold": list(gold or [])}
    # No `<` may reach the script element: `</script>` would close it and `<!--<script` would swallow its end tag.
    payload = json.dumps(data, ensure_ascii=False).replace("<", "\\u003c")
    fill = {"__TITLE__": html.escape(title), "__DATA__": payload}
    return re.sub("__TITLE__|__DATA__", lambda match: fill[match.group(0)], _PAGE)


__all__ = ["explanation_page"]
