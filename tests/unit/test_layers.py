"""The package's shape: no module imports another that (directly or not) imports it back.

The layer contract itself is import-linter's (`make lint`, .importlinter); this test keeps the
rest of DESIGN.md's rule, "nothing imports in a circle", including imports made only for type
checking or inside functions (they are cycles all the same when the code is read or moved).
"""

from __future__ import annotations

import grimp


def test_no_import_cycle_anywhere_in_the_package():
    graph = grimp.build_graph("reconciler")
    cycles = sorted(
        {
            tuple(sorted((module, imported)))
            for module in graph.modules
            for imported in graph.find_modules_directly_imported_by(module)
            if graph.chain_exists(importer=imported, imported=module)
        }
    )
    assert cycles == []


def test_the_core_imports_nothing_else_of_the_package():
    graph = grimp.build_graph("reconciler")
    outside = {
        (module, imported)
        for module in graph.find_descendants("reconciler.core") | {"reconciler.core"}
        for imported in graph.find_modules_directly_imported_by(module)
        if imported.startswith("reconciler") and not imported.startswith("reconciler.core")
    }
    assert outside == set()
