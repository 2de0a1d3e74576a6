"""Intent routing, parameter extraction and prompt handling (pure Python, no Ray).

- `router.cascade.Cascade`: chat message (+ attached image count + session context) → `Plan`,
  through rules (`router.rules`, `router.params`), a sentence-embedding classifier
  (`router.embeddings`, exemplars in `router.exemplars`) and, when still unsure, an LLM
  (`router.llm`); `router.planner` attaches parameters and image inputs.
- `router.prompts`: prompt validation, analysis, compression and refinement.
- `router.schemas`: the typed inputs and outputs; `router.styles`: style presets.
- `router.replies`: the chat's reply texts (help, suggestions, actions) in English and French.
- `python -m router.eval FILE.jsonl`: intent, parameter and prompt accuracy on a labelled set.
"""
