"""The viewer of an Emu3.5 result: one self-contained HTML page with the response in reading order.

`render_html(data)` takes the JSON form written by `InterleavedResult.save` (`result.json`) and lays
out the prompt, the reference images, then every segment in order: text as paragraphs, the global
and image-level chains of thought as collapsible notes (an image's thought sits just above it), and
images by their relative paths, so the page works when opened from the result folder. All text is
HTML-escaped. No scripts, no external resources.
"""

from __future__ import annotations

from html import escape

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 56rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
.text { white-space: pre-wrap; line-height: 1.5; }
details { background: #f4f4f8; border-left: 3px solid #889; margin: 1rem 0; padding: .5rem .8rem; }
details p { white-space: pre-wrap; margin: .5rem 0 0; }
figure { margin: 1rem 0; }
img { max-width: 100%; image-rendering: auto; border-radius: 4px; }
.refs img { max-height: 12rem; margin-right: .5rem; }
.meta { color: #777; font-size: .85rem; }
"""
_THOUGHTS = {"global_cot": "Global thinking", "image_cot": "Image thinking"}


def render_html(data: dict) -> str:
    """The page for one result dictionary (see `InterleavedResult.to_dict`)."""
    task = escape(str(data.get("task", "")))
    prompt = escape(data.get("prompt", ""))
    parts = [f"<h1>Emu3.5 · {task}</h1>", f'<p class="text"><strong>Prompt:</strong> {prompt}</p>']
    refs = data.get("reference_images") or []
    if refs:
        imgs = "".join(f'<img src="{escape(p, quote=True)}" alt="reference {i}">' for i, p in enumerate(refs))
        parts.append(f'<div class="refs"><p class="meta">Reference images</p>{imgs}</div>')
    for seg in data.get("segments", []):
        kind = seg.get("type")
        if kind == "image":
            grid = "x".join(str(n) for n in seg.get("grid", []))
            src = escape(seg.get("path") or "", quote=True)
            parts.append(f'<figure><img src="{src}" alt="generated image"><figcaption class="meta">{grid} tokens'
                         "</figcaption></figure>")
        elif kind in _THOUGHTS:
            parts.append(f"<details><summary>{_THOUGHTS[kind]}</summary><p>{escape(seg.get('text', ''))}</p></details>")
        else:
            parts.append(f'<p class="text">{escape(seg.get("text", ""))}</p>')
    seconds, stopped = data.get("seconds"), data.get("stopped")
    parts.append(f'<p class="meta">stopped: {escape(str(stopped))} · seed {escape(str(data.get("seed")))} · '
                 f"{escape(str(seconds))} s</p>")
    body = "\n".join(parts)
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>Emu3.5 {task}</title>'
            f"<style>{_STYLE}</style></head>\n<body>\n{body}\n</body></html>\n")


__all__ = ["render_html"]
