"""Data stage: records as people have them -> validated Conversations, quarantine, policy, statistics."""
