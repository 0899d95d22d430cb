-- lattice: backward-compatible
-- What a stored message is to the conversation: `message` (anyone's, other bots' included), `answer`
-- (Lattice's own reply: the model's assistant turns) or `notice` (Lattice's apologies and notices:
-- never context). Code built before this column inserts without it and gets `message`.
ALTER TABLE messages ADD COLUMN kind TEXT NOT NULL DEFAULT 'message'
    CHECK (kind IN ('message', 'answer', 'notice'));
