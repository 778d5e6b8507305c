"""The root: fetch features, preprocess, trim per model, fan out to leaves, merge.

The top level is the request path, in the order a score request takes it:
`server` (the loop; `frontend`, the client socket and its replies) ->
`intake` (checks) -> `scoring` (fetch, preprocess, trim, hand over; `job`
what its steps hand each other) ->
`router` (a request from open to its one reply: sends, resends, deadlines;
`open_request` its state, `reply` the merge) -> back to the client. `app`
builds the parts (`Root`: build / run / close); `workers`, `security`,
`metrics`, `request_trace` (a request's spans, when tracing is on),
`settings` and `defaults` serve them.

The parts, each a subpackage: `leaves` (links to leaves, encoding, shared
memory, agreement), `featurestore` (where features come from), `preprocess`
(records to a batch), `rollout` (the installed config and its follower),
`client` (the scoring client, health, `trimmer score`) and `demo`.
"""
