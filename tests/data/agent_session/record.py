"""How this session was recorded (once, from the REAL demo engine on CPU).

    nla-tui run --preset demo --messages tests/data/agent_transcript.json \
        --explain all --max-explain-tokens 24 --out tests/data/agent_session

Gemma 3 270M subject + the demo AV/AR pair (v2, trained adapters), fp32, greedy: the tool-using
transcript in tests/data/agent_transcript.json (system prompt, a tool call, its
result, the answer), every token explained (24 AV tokens each, so many explanations
are truncated). The finding/search tests and the agent_search snapshot replay it.
"""
