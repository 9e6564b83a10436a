import pytest

# contract.py holds the shared checks every backbone's test class inherits: keep pytest's
# detailed assertion messages for them.
pytest.register_assert_rewrite("tests.featurizer.backbones.contract")
