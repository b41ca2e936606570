"""Stock and shipments: blinded inventory, the shipment list, a depot's dispatch
and a site's receipt, over the core services the phone and CLI use."""

from __future__ import annotations

from core import records
from core.overviews import inventory
from core.supply.receipt import receive_shipment
from core.supply.shipments import dispatch_shipment
from ivrs.api import models as m
from ivrs.api.registry import Context, operation


@operation("GET", "/inventory", summary="Blinded stock per site", tag="supply",
           answer=m.InventoryOut, query=m.InventoryQuery, problems=(401, 403, 422))
def get_inventory(ctx: Context, *, query: m.InventoryQuery) -> m.InventoryOut:
    """Kits available (dispensable), quarantined and on their way, all kit types
    together: per-type counts would tell arms apart."""
    stock = inventory(ctx.db, actor=ctx.actor, study=ctx.study, site=query.site)
    return m.InventoryOut(sites=[m.SiteStockOut(**vars(line)) for line in stock])


@operation("GET", "/shipments", summary="Shipments, a page at a time", tag="supply",
           answer=m.ShipmentsOut, query=m.ShipmentsQuery, problems=(401, 403, 422))
def list_shipments(ctx: Context, *, query: m.ShipmentsQuery) -> m.ShipmentsOut:
    """Oldest first; a shipment's kits are counted, never typed."""
    page = records.shipments_page(ctx.db, actor=ctx.actor, study=ctx.study, site=query.site,
                                  status=query.status, after=query.after, limit=query.limit)
    return m.ShipmentsOut(shipments=[m.ShipmentLineOut(**vars(line)) for line in page.items],
                          next_after=page.next_after)


@operation("POST", "/shipments/{number}/dispatch", tag="supply",
           summary="The depot hands a shipment to the carrier", answer=m.ShipmentOut,
           body=m.DispatchIn)
def post_dispatch(ctx: Context, *, number: str, body: m.DispatchIn) -> m.ShipmentOut:
    result = dispatch_shipment(ctx.db, shipment_number=number, carrier=body.carrier,
                               tracking_number=body.tracking_number, actor=ctx.actor,
                               dispatched_on=body.date, study=ctx.study,
                               idempotency_key=ctx.key)
    return m.ShipmentOut(**vars(result))


@operation("POST", "/shipments/{number}/receive", tag="supply",
           summary="A site confirms a shipment's arrival", answer=m.ReceivedOut,
           body=m.ReceiveIn)
def post_receive(ctx: Context, *, number: str, body: m.ReceiveIn) -> m.ReceivedOut:
    """Kits not named damaged or missing arrived in good condition; a temperature
    excursion quarantines the whole shipment until the supply team decides."""
    result = receive_shipment(ctx.db, shipment_number=number, actor=ctx.actor,
                              damaged=body.damaged, missing=body.missing,
                              temperature_excursion=body.temperature_excursion,
                              study=ctx.study, idempotency_key=ctx.key)
    return m.ReceivedOut(**vars(result))
