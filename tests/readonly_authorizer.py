"""An authorizer for the tests' Jupyter server: every user may read, nobody may write or execute."""

from jupyter_server.auth import Authorizer


class ReadOnly(Authorizer):
    def is_authorized(self, handler, user, action, resource):
        return action == "read"
