async def test_reserve_then_read(engine):
    await engine.set_on_hand("A", "default", 3)
    r = await engine.reserve([{"sku": "A", "quantity": 2}])
    assert r.created and r.data["items"] == [
        {"sku": "A", "location": "default", "quantity": 2, "backordered": 0}
    ]
    s = (await engine.get_stock("A")).data
    assert s["total"]["available"] == 1 and s["total"]["reserved"] == 2
