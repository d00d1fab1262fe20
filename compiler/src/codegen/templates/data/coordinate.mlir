        %cs{{d}} = arith.constant {{stride}} : index
        %cq{{d}} = arith.divui %i, %cs{{d}} : index
        %cn{{d}} = arith.constant {{extent}} : index
        %c{{d}} = arith.remui %cq{{d}}, %cn{{d}} : index
