"""Agent environments: the tools one episode can call, with the state they keep."""
