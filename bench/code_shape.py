"""The shape of the code: the longest functions and the largest classes (in lines) under src/ and stages/.

    python bench/code_shape.py [root]      # root: a checkout (default: this one)
"""

import ast
import sys
from pathlib import Path


def spans(root: Path):
    for path in sorted([*root.glob("src/**/*.py"), *root.glob("stages/*.py")]):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                kind = "class" if isinstance(node, ast.ClassDef) else "def"
                yield kind, node.end_lineno - node.lineno + 1, f"{path.relative_to(root)}:{node.lineno} {node.name}"


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    found = list(spans(root))
    functions = sorted((s for s in found if s[0] == "def"), key=lambda s: -s[1])[:10]
    classes = sorted((s for s in found if s[0] == "class"), key=lambda s: -s[1])[:3]
    print("longest functions (lines):")
    for _, n, where in functions:
        print(f"  {n:4d}  {where}")
    print("largest classes (lines):")
    for _, n, where in classes:
        print(f"  {n:4d}  {where}")


if __name__ == "__main__":
    main()
