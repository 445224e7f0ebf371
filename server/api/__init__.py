"""HTTP API v1 for booking software (bearer tokens issued by ``lockstep token create``)."""
