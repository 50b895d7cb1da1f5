"""The agent: prompts, action formats and the batched episode loop."""
