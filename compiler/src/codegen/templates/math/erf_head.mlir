        %{{out}}_nx = arith.negf {{x}} : f32
        %{{out}}_ax = arith.maximumf {{x}}, %{{out}}_nx : f32
        %{{out}}_p = arith.constant 0.3275911 : f32
        %{{out}}_one = arith.constant 1.0 : f32
        %{{out}}_pd = arith.mulf %{{out}}_p, %{{out}}_ax : f32
        %{{out}}_den = arith.addf %{{out}}_one, %{{out}}_pd : f32
        %{{out}}_t = arith.divf %{{out}}_one, %{{out}}_den : f32
