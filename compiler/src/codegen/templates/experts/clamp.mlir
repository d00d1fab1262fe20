        %lim = arith.constant {{limit}} : f32
        %nlim = arith.constant {{negative_limit}} : f32
        %gl = arith.minimumf %g, %lim : f32
        %ul0 = arith.minimumf %u, %lim : f32
        %ul = arith.maximumf %ul0, %nlim : f32
