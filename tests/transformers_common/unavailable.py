"""Not from transformers: stand-ins for two mixins whose files the transformers 5.24.0 sdist does not ship.

`test_modeling_common.py` imports `ExportTesterMixin` (tests/exporters/test_export.py, the `torch.export` tests) and
`GenerationTesterMixin` (tests/generation/test_utils.py). Without them, their tests do not run; nothing passes in
their place. Generation is exercised by tests/test_transformers_contract.py and tests/test_generation.py.
"""


class ExportTesterMixin:
    """Empty: transformers' `torch.export` tests are not available at 5.24.0 here."""


class GenerationTesterMixin:
    """Empty: transformers' generation tests are not available at 5.24.0 here."""
