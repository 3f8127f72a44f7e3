"""Online estimates of the RTRL influence matrix: exact RTRL, UORO, KF-RTRL and OK (online_rtrl spec section 2)."""
