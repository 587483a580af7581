"""The live attacks run the function with its state in Azurite, as the integration tests do."""

from tests.integration.conftest import durable_state

__all__ = ["durable_state"]
