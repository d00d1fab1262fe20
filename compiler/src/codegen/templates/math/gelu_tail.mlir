        %{{out}}_one = arith.constant 1.0 : f32
        %{{out}}_half = arith.constant 0.5 : f32
        %{{out}}_p = arith.addf %{{out}}_one, %{{out}}_erf : f32
        %{{out}}_hx = arith.mulf %{{out}}_half, {{x}} : f32
        %{{out}} = arith.mulf %{{out}}_hx, %{{out}}_p : f32
