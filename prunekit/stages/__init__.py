"""Extra pipeline stage types, one module each.

A module here registers its settings model in `prunekit.recipe.STAGE_CONFIGS` and its
runner in `prunekit.pipeline.STAGE_RUNNERS` under the same name. Every module in this
package is imported when recipes are validated, so a new stage type is one new file.
"""

import importlib
import pkgutil

for _mod in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_mod.name}")
