"""Nothing a simulated owner sends contains its rows: only summaries, updates and metrics."""

import privkeras as pk
from privkeras.backends.federated import FederatedData

from .conftest import make_model


def test_no_answer_of_an_owner_contains_any_of_its_rows(partitions):
    data = FederatedData.simulate(partitions)
    sent: dict[str, list[bytes]] = {}
    for client in data.clients():
        service = client.transport.service
        original = service.handle

        def recording(method, request, original=original, name=client.name):
            answer = original(method, request)
            sent.setdefault(name, []).append(answer)
            return answer

        service.handle = recording
    model = make_model(pk.Federated(rounds=2, min_owners=3))
    model.fit(data, verbose=0)
    model.evaluate(data, verbose=0)
    for (x, _), client in zip(partitions, data.clients()):
        answers = b"".join(sent[client.name])
        assert len(sent[client.name]) == 2 + 2 + 1  # describe, configure, 2 x train, evaluate
        for row in x:
            for encoding in (row.astype("<f4"), row.astype("<f8")):
                assert encoding.tobytes() not in answers
        # the update is as large as the model and no larger than it plus a header
        weights = sum(w.size for w in model.get_weights())
        assert max(len(a) for a in sent[client.name]) < 4 * (weights + 1) + 400
