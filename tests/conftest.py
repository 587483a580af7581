"""Fixtures shared by every test folder: the real services' stand-ins that tests start themselves.

The AMQP 1.0 test broker (for the real azure-servicebus SDK) and Azurite (for Table Storage) are
plugins of their own so that each lives beside its code.
"""

pytest_plugins = ["tests.broker.plugin", "tests.azurite.plugin"]
