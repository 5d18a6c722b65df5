"""`reverie completion bash|zsh`: print a shell completion script for the `reverie` command.

    eval "$(reverie completion bash)"     # add to ~/.bashrc
    eval "$(reverie completion zsh)"      # add to ~/.zshrc, after compinit

The script asks reverie what can follow the words typed so far (`reverie completion bash -- LINE`),
so it completes what this install can run: commands and subcommands, each command's keys (`preset=`,
`bc.` then `bc.steps=`), config-group options (`preset=tiny`), true/false for flags, deploy's options;
paths are left to the shell. (The commands are not argparse parsers, so argcomplete does not apply.)
"""

from __future__ import annotations

import importlib
import shlex

from reverie.errors import ReverieError

BASH = r"""_reverie_complete() {
    local IFS=$'\n'
    COMPREPLY=($(reverie completion bash -- "${COMP_LINE:0:$COMP_POINT}" 2>/dev/null))
}
complete -o default -o nospace -F _reverie_complete reverie
"""
ZSH = r"""_reverie_complete() {
    local -a found open closed
    found=(${(f)"$(reverie completion zsh -- "${(@)words[2,CURRENT]}" 2>/dev/null)"})
    if (( ! $#found )); then compset -P '*='; _files; return; fi
    for c in $found; do if [[ $c == *[=.] ]]; then open+=($c); else closed+=($c); fi; done
    (( $#open )) && compadd -S '' -- $open
    (( $#closed )) && compadd -- $closed
}
compdef _reverie_complete reverie
"""
SCRIPTS = {"bash": BASH, "zsh": ZSH}
WORDS = tuple(SCRIPTS)  # what `reverie completion` itself takes


def candidates(words: list[str], current: str) -> list[str]:
    """What the word being typed (`current`) can become after `reverie <words>`; flags only once a
    `-` is typed, so an empty word with nothing else to offer falls back to the shell's paths."""
    from reverie.cli import GROUPS, available

    ready = available()
    if not words:
        options = sorted({w[0] for w in ready}) + ["--help", "--version"]
    elif len(words) == 1 and words[0] in GROUPS:
        options = [w[1] for w in ready if w[0] == words[0]] + ["--help"]
    else:
        n = next((n for n in (2, 1) if tuple(words[:n]) in ready), 0)
        options = command_options(ready[tuple(words[:n])], current) if n else []
    return sorted(o for o in options if o.startswith(current) and (current[:1] == "-" or o[:1] != "-"))


def command_options(command, current: str) -> list[str]:
    """A hydra-style command's keys and values come from its config; others name theirs in the module
    (KEYS: its key=value options, CHOICES: key -> values, WORDS: positional words)."""
    if command.config:
        from reverie.config import completions

        return completions(command.config, current) + ["--help", "--cfg"]
    module = importlib.import_module(command.module)
    key, eq, _ = current.partition("=")
    if eq:
        return [f"{key}={v}" for v in getattr(module, "CHOICES", {}).get(key, ())]
    return [f"{k}=" for k in getattr(module, "KEYS", ())] + list(getattr(module, "WORDS", ())) + ["--help"]


def for_bash(line: str) -> list[str]:
    """Bash hands over the line up to the cursor; it replaces only the text after the last `=` or `:`
    (its word breaks), and adds no space itself (-o nospace): one is added to finished words."""
    try:
        tokens = shlex.split(line)
    except ValueError:  # an unclosed quote while typing
        tokens = line.split()
    current = "" if not tokens or line[-1:].isspace() else tokens.pop()
    found = candidates(tokens[1:], current)
    cut = max(current.rfind("="), current.rfind(":")) + 1
    return [c[cut:] + ("" if c.endswith(("=", ".", "/")) else " ") for c in found]


def main(argv: list[str]) -> int:
    shell = argv[0] if argv else None
    if shell not in SCRIPTS or (len(argv) > 1 and argv[1] != "--"):
        if argv[:1] in (["-h"], ["--help"]):
            print(__doc__)
            return 0
        raise ReverieError(f"completion takes the shell: bash or zsh (got {' '.join(argv) or 'nothing'}), e.g. "
                           'eval "$(reverie completion bash)"')
    if len(argv) == 1:
        print(SCRIPTS[shell], end="")
        return 0
    found = for_bash(" ".join(argv[2:])) if shell == "bash" else candidates(argv[2:-1], argv[-1] if len(argv) > 2 else "")
    print("\n".join(found))
    return 0
