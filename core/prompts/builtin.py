"""Built-in prompt templates and parameters: the embedded gemma3:270m model's chat format."""

from __future__ import annotations

from typing import Any

# Gemma 3's turn format in Go text/template syntax. Gemma has no system role: system text is
# prepended to the first user turn (separated by a blank line), the way Google's own chat template
# does it. BOS is not in the template; the tokenizer adds it (PromptPlan.add_special).
GEMMA3_TEMPLATE = """\
{{- $system := "" }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "system" }}
{{- if $system }}{{ $system = printf "%s\\n\\n%s" $system .Content }}
{{- else }}{{ $system = .Content }}{{ end }}
{{- else if or (eq .Role "user") (eq .Role "tool") }}<start_of_turn>user
{{ if $system }}{{ $system }}

{{ $system = "" }}{{ end }}{{ .Content }}<end_of_turn>
{{ if $last }}<start_of_turn>model
{{ end }}
{{- else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}{{ if not $last }}<end_of_turn>
{{ end }}
{{- end }}
{{- end }}"""

# compat(ollama): the gemma3 library model's params layer.
GEMMA3_PARAMS: dict[str, Any] = {
    "stop": ["<end_of_turn>"],
    # The embedded model is Gemma 3 270M *base*: it has no instruction tuning and rarely ends a turn by
    # itself, so without a cap a one-line question runs to 10 x num_ctx tokens. A model created FROM it
    # can lift the cap with `PARAMETER num_predict -1`.
    "num_predict": 256,
    "temperature": 1.0,
    "top_k": 64,
    "top_p": 0.95,
}
