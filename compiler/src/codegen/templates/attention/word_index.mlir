        %{{t}}c = arith.constant {{offset}} : index
        %{{t}}w = arith.addi %tid, %{{t}}c : index
        %{{t}}n = arith.constant {{count}} : index
        %{{t}}in = arith.cmpi ult, %{{t}}w, %{{t}}n : index
