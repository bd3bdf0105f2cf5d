"""A 20-order batch costs the same statements as a 1-order batch, and one commit."""

from __future__ import annotations

from collections.abc import Callable

from batchops.core.runtime import Runtime
from tests.dining.conftest import Canteen, order
from tests.helpers import data
from tests.scheduler.test_statement_counts import commits_counted, shape


async def test_twenty_order_batch_is_constant_statements_and_one_commit(
    canteen: Canteen, runtime: Runtime, statement_counter: Callable[[], list[str]]
) -> None:
    members = [f"m{i:02d}" for i in range(50)]
    users = [{"userId": u, "departmentId": "dept-a"} for u in members]
    data(await canteen.client.post("/admin/users/batch", json={"users": users}, headers=canteen.admin))
    menus = [
        {"date": canteen.day(d), "mealType": m, "price": "9.90", "published": True}
        for d in range(2, 9)
        for m in ("breakfast", "lunch", "dinner")
    ]
    await canteen.menus(menus)
    slots = [(mm["date"], mm["mealType"]) for mm in menus]

    measured = []
    for orders in (
        [order(*slots[0], "user1")],
        [order(d, m, *members) for d, m in slots[1:21]],  # 20 orders × 50 members = 1,000 lines
    ):
        before = len(statement_counter())
        with commits_counted(runtime) as commits:
            result = data(await canteen.batch(orders))
        assert result["successCount"] == len(orders), result["errors"]
        statements = statement_counter()[before:]
        measured.append((shape(statements), commits[0]))
        assert not any("SAVEPOINT" in s.upper() for s in statements)
        assert sum(s.lstrip().upper().startswith("INSERT INTO DINING_ORDER_LINES") for s in statements) == 1
    (small, small_commits), (large, large_commits) = measured
    assert small == large, (small, large)
    # one commit, the batch's (the caller is read outside any transaction: Database.read)
    assert small_commits == large_commits == 1
    assert len(large) <= 12, large
    assert result["orders"][0]["totalAmount"] == 495.00  # 50 × 9.90, exact
