        %{{p}}so = arith.addi %obase, %c{{slot}} : index
        %{{p}}w = arith.divf %one, %{{p}}sum : f32
        memref.store %{{p}}w, %a1[%{{p}}so] : {{m_k}}
        %{{p}}i64 = arith.index_cast %{{p}}i : index to i64
        %{{p}}if = arith.sitofp %{{p}}i64 : i64 to f32
        memref.store %{{p}}if, %a2[%{{p}}so] : {{m_k}}
