"""One place that writes a script's table into benches/RESULTS.md.

Each benchmark script owns one block between `<!-- NAME:start -->` and
`<!-- NAME:end -->`; the rest of the file (other scripts' blocks, session notes)
is kept. The file is replaced atomically, so a script stopped mid-write leaves
the previous version.
"""

import os

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")


def read_block(name):
    """The text of block `name`, or None when RESULTS.md has no such block."""
    text = open(RESULTS).read() if os.path.exists(RESULTS) else ""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start not in text or end not in text:
        return None
    return text[text.index(start) + len(start): text.index(end)].strip("\n")


def write_block(name, table, heading):
    """Put `table` in block `name`, appending it under `heading` if absent."""
    text = open(RESULTS).read() if os.path.exists(RESULTS) else "# Head-to-head results\n"
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{table}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + f"\n\n## {heading}\n\n" + block + "\n"
    tmp = RESULTS + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, RESULTS)
