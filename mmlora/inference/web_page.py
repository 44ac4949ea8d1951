"""The try-it page of `mmlora serve --ui`: upload an image, ask, see the answer.

One self-contained HTML page (no scripts or styles from elsewhere, so it works offline) served
at `/` by the same server as the API. The browser reads the chosen image as a data URL and
sends it with the question to `/v1/chat/completions`, exactly as an OpenAI client would, so
the page shows what the API answers. Errors show the API's error message.
"""

from __future__ import annotations

import html
import json

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>mmlora: __MODEL__</title>
<style>
  body { font-family: system-ui, sans-serif; max-width: 760px; margin: 2em auto; color: #222; }
  h1 { font-size: 1.3em; } .model { color: #555; font-family: monospace; }
  label { display: block; margin-top: 1em; font-weight: 600; }
  textarea, input[type=text], input[type=number] { width: 100%; box-sizing: border-box; font-size: 1em; padding: .4em; }
  #preview { display: block; max-width: 320px; max-height: 320px; margin-top: .5em; }
  button { margin-top: 1em; font-size: 1em; padding: .5em 1.5em; }
  #answer { margin-top: 1em; padding: .8em; min-height: 1.5em; background: #f3f3f3; white-space: pre-wrap; }
  #answer.error { background: #fde8e8; color: #8a1111; }
</style>
</head>
<body>
<h1>Ask <span class="model">__MODEL__</span> about an image</h1>
<form id="ask-form">
  <label for="image">Image</label>
  <input id="image" name="image" type="file" accept="image/*">
  <img id="preview" alt="" hidden>
  <label for="prompt">Question</label>
  <textarea id="prompt" name="prompt" rows="2" placeholder="What is in the image?"></textarea>
  <label for="system">System message (optional)</label>
  <input id="system" name="system" type="text">
  <label for="max-tokens">Longest answer (tokens)</label>
  <input id="max-tokens" name="max-tokens" type="number" min="1" value="128">
  <button id="ask" type="submit">Ask</button>
</form>
<div id="answer" aria-live="polite"></div>
<script>
const form = document.getElementById("ask-form"), answer = document.getElementById("answer");
const imageInput = document.getElementById("image"), preview = document.getElementById("preview");
let imageUrl = null;
imageInput.addEventListener("change", () => {
  const file = imageInput.files[0];
  if (!file) { imageUrl = null; preview.hidden = true; return; }
  const reader = new FileReader();
  reader.onload = () => { imageUrl = reader.result; preview.src = imageUrl; preview.hidden = false; };
  reader.readAsDataURL(file);
});
form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const question = document.getElementById("prompt").value.trim();
  const system = document.getElementById("system").value.trim();
  const maxTokens = parseInt(document.getElementById("max-tokens").value, 10) || 128;
  if (!question) { show("Write a question first.", "error"); return; }
  const content = [];
  if (imageUrl) content.push({type: "image_url", image_url: {url: imageUrl}});
  content.push({type: "text", text: question});
  const messages = system ? [{role: "system", content: system}] : [];
  messages.push({role: "user", content});
  show("…", "pending");
  try {
    const response = await fetch("v1/chat/completions", {method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({model: __MODEL_JSON__, messages, max_tokens: maxTokens})});
    const data = await response.json();
    if (!response.ok) show(data.error ? data.error.message : response.statusText, "error");
    else show(data.choices[0].message.content, "done");
  } catch (err) { show(String(err), "error"); }
});
function show(text, state) {  // state: pending, done or error (the class tests and styles read)
  answer.textContent = text; answer.className = state;
}
</script>
</body>
</html>
"""


def page_html(model: str) -> str:
    """The page for the served model id `model`."""
    in_script = json.dumps(model).replace("<", "\\u003c")  # no `</script>` can end the script early
    return PAGE.replace("__MODEL_JSON__", in_script).replace("__MODEL__", html.escape(model))
