"""Trial supply: kits and their lifecycle, shipments, resupply, expiry, visits and dispensing."""
